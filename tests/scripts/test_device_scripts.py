"""The GPU-host scripts (scripts/device): syntax, the wheel-dependency check, and the check's
CPU path (it must stop cleanly where CUDA is needed and still write its report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DEVICE = REPO_ROOT / "scripts" / "device"
sys.path.insert(0, str(DEVICE))
import wheel_deps  # noqa: E402


@pytest.mark.parametrize("script", ["prepare.sh", "gpu_check.sh", "service_probe.sh"])
def test_shell_syntax(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(DEVICE / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    """A minimal wheel: only what pip and wheel_deps read (METADATA)."""
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n{}\n\nbody\n".format(
        name, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_wheel_deps_finds_what_the_host_lacks(tmp_path: Path) -> None:
    wheels = [
        _wheel(
            tmp_path,
            "alpha",
            [
                "beta>=1",
                "numpy",
                "gamma; extra == 'fast'",
                "delta; python_version < '3.10'",
                "Typing_Extensions>=4",
            ],
        ),
        _wheel(tmp_path, "beta", ["epsilon; sys_platform == 'linux'"]),
    ]
    problems = wheel_deps.check(wheels, {"numpy", "typing-extensions"})
    assert problems == ["beta needs epsilon: neither carried nor on the host"]


def test_wheel_deps_refuses_two_versions(tmp_path: Path) -> None:
    one = _wheel(tmp_path, "alpha", [])
    other = tmp_path / "alpha-2.0-py3-none-any.whl"
    other.write_bytes(one.read_bytes())
    assert any("carried twice" in p for p in wheel_deps.check([one, other], set()))


def test_host_package_list_is_read() -> None:
    host = wheel_deps.host_packages(DEVICE / "host_packages.txt")
    assert {"torch", "numpy", "onnx", "prometheus-client"} <= host
    assert "fastapi" not in host  # carried: the whole point of prepare.sh


def test_gpu_check_stops_cleanly_without_cuda(tmp_path: Path) -> None:
    """The real script, with nothing carried, on this (GPU-less) machine."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the no-CUDA path does not apply")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "SITE": str(tmp_path / "site"),
        "PARTS_DIR": str(tmp_path / "parts"),
        "WHL": str(tmp_path / "no-wheels"),
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", str(DEVICE / "gpu_check.sh"), "--stages", "env,engines,variants,engine,service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CUDA is not available here" in result.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["env"]["cuda"] is False
    assert "no carried wheels" in report["env"]["install"]
    for stage in ("engines", "variants", "engine", "service"):
        assert report[stage]["skipped"].startswith("CUDA needed: torch sees no CUDA device")
    assert (out / "gpu_check.log").stat().st_size > 0
