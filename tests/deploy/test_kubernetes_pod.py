"""The cpu overlay's pod, run here: its init container's and API container's commands with the
environment the image and the rendered ConfigMaps and Secret give them, each volume a
directory shared the way the pod shares it. When the tests run as root (as CI does), both
commands run as the pod's runAsUser/runAsGroup with an unwritable HOME, so that only the
volumes are writable, as with the read-only root filesystem.

The model step exports a bundle into the `models` volume, the API serves it, every probe of
the Deployment answers on its path, the Secret's key is required, and SIGTERM ends the API
within the termination grace period. Two departures from the cluster, forced by the test
machine: the model step exports a small local checkpoint (PANNS_CHECKPOINT) instead of
downloading Cnn14, and the API listens on 127.0.0.1, a free port, with one ONNX Runtime thread.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.deploy.deploy_files import DOCKERFILES, parse_dockerfile
from tests.deploy.kube_files import (
    Obj,
    container,
    container_env,
    container_port,
    kustomize_command,
    overlay,
    pod_spec,
)

pytestmark = pytest.mark.slow

if kustomize_command() is None:
    pytest.skip(
        "neither kubectl nor kustomize is installed: cannot render deploy/kubernetes",
        allow_module_level=True,
    )

ARCH = "MobileNetV1"  # small and quick to export; named after its architecture (README)
DOCKERFILE_OF = {
    "api-cpu": "service-cpu",
    "api-gpu": "service-gpu",
    "model-builder": "model-builder",
}  # image name -> docker/<name>.Dockerfile


def image_env(item: Obj) -> dict[str, str]:
    """The ENV of the container's image (its Dockerfile's final stage), PATH aside."""
    name = item["image"].rsplit("/", 1)[-1].split(":")[0]
    path = next(p for p in DOCKERFILES if p.stem == DOCKERFILE_OF[name])
    args = " ".join(a for kw, a in parse_dockerfile(path).stages()[-1] if kw == "ENV")
    return {k: v for k, v in re.findall(r"([A-Za-z_]\w*)=(\S+)", args) if "$" not in v}


class Pod:
    """The rendered pod's containers as processes on this machine."""

    def __init__(self, objects: tuple[Obj, ...], root: Path) -> None:
        self.objects = objects
        self.spec = pod_spec(objects)
        context = self.spec["securityContext"]
        self.user = (int(context["runAsUser"]), int(context["runAsGroup"]))
        self.drop_root = os.geteuid() == 0 and shutil.which("setpriv") is not None
        self.volumes = {v["name"]: root / v["name"] for v in self.spec["volumes"]}
        for path in self.volumes.values():
            path.mkdir()
            if self.drop_root:
                os.chown(path, *self.user)  # fsGroup makes emptyDirs the pod's to write

    def host_path(self, item: Obj, path: str) -> str:
        """``path`` inside ``item`` (a container) as the directory of its volume here."""
        for mount in item["volumeMounts"]:
            root = mount["mountPath"].rstrip("/")
            if path == root or path.startswith(root + "/"):
                return str(self.volumes[mount["name"]]) + path[len(root) :]
        return path

    def env(self, item: Obj, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PANNS_")}
        env.update(HOME="/nonexistent", OMP_NUM_THREADS="1")  # the image's HOME is read-only
        inside = {"TMPDIR": "/tmp", **image_env(item), **container_env(self.objects, item)}
        for name, value in inside.items():
            parts = [self.host_path(item, p) if p.startswith("/") else p for p in value.split(",")]
            env[name] = ",".join(parts)
        env.update(overrides)
        return env

    def argv(self, item: Obj) -> list[str]:
        command = [*item["command"], *item.get("args", [])]
        assert command[0] == "python"
        user = ["setpriv", f"--reuid={self.user[0]}", f"--regid={self.user[1]}", "--clear-groups"]
        return [*(user if self.drop_root else []), sys.executable, *command[1:]]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A directory the pod's user can reach (pytest's own tmp dirs are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="panns-pod-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pod(root: Path) -> Pod:
    (root / "volumes").mkdir(mode=0o755)
    return Pod(overlay("cpu"), root / "volumes")


@pytest.fixture(scope="module")
def checkpoint(root: Path) -> Path:
    import torch

    from training.models import create_model

    torch.manual_seed(0)
    path = root / f"{ARCH}.pth"
    torch.save({"model": create_model(ARCH).state_dict()}, path)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def bundle(pod: Pod, checkpoint: Path) -> Path:
    """The init container's command fills the `models` volume."""
    model = container(pod.spec, "model", init=True)
    env = pod.env(model, PANNS_CHECKPOINT=str(checkpoint))
    assert env["TMPDIR"] == str(pod.volumes["tmp"]) and "NUMBA_CACHE_DIR" in env
    done = subprocess.run(
        pod.argv(model), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    path = Path(env["PANNS_MODELS"].split(",")[0])
    assert (path / "model.json").is_file()
    assert path.is_relative_to(pod.volumes["models"])
    return path


@pytest.fixture(scope="module")
def api(pod: Pod, bundle: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    item = container(pod.spec, "api")
    port = free_port()
    env = pod.env(item, PANNS_HOST="127.0.0.1", PANNS_PORT=str(port), PANNS_THREADS="1")
    assert env["PANNS_MODELS"] == str(bundle), "the API reads what the model step wrote"
    process = subprocess.Popen(
        pod.argv(item), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def probe(item: Obj, kind: str, port: int, container_port_here: int) -> int | None:
    """One HTTP probe as the kubelet sends it: the status, or None without an answer."""
    get = item[kind]["httpGet"]
    assert container_port(item, get["port"]) == container_port_here
    try:
        timeout = item[kind].get("timeoutSeconds", 1)
        return httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=timeout).status_code
    except httpx.TransportError:
        return None


def test_the_pod_starts_serves_and_stops_within_its_grace_period(
    pod: Pod, api: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = api
    item = container(pod.spec, "api")
    in_container = int(container_env(pod.objects, item)["PANNS_PORT"])
    startup = item["startupProbe"]
    deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
    while probe(item, "startupProbe", port, in_container) != 200:
        if process.poll() is not None:
            pytest.fail(f"the API exited with {process.returncode}: {process.communicate()[1]!r}")
        assert time.monotonic() < deadline, "the startup probe never succeeded"
        time.sleep(0.5)
    assert probe(item, "readinessProbe", port, in_container) == 200
    assert probe(item, "livenessProbe", port, in_container) == 200

    key = container_env(pod.objects, item)["PANNS_API_KEYS"]  # from the Secret
    models = f"http://127.0.0.1:{port}/v1/models"
    assert httpx.get(models, timeout=10).status_code == 401
    answer = httpx.get(models, headers={"X-API-Key": key}, timeout=10)
    assert answer.status_code == 200, answer.text

    grace = pod.spec["terminationGracePeriodSeconds"]
    pre_stop = int(item["lifecycle"]["preStop"]["exec"]["command"][1])
    process.send_signal(signal.SIGTERM)  # the kubelet sends it once preStop has run
    process.wait(timeout=grace - pre_stop)
    assert process.returncode in (0, -signal.SIGTERM)
