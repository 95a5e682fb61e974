"""The containers' commands, run outside Docker with the environment Compose gives them.

`model` (python -m model_export.ensure) exports a bundle from a local checkpoint saved under
an official name, then does nothing on a second run; `api` (python -m service) starts from
that bundle with the CPU deployment's environment, becomes ready, passes the image's health
check and exposes every metric the Grafana dashboard queries.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.deploy.deploy_files import (
    COMPOSE,
    COMPOSE_CPU,
    dashboard_exprs,
    environment,
    exposed_sample_names,
    load_compose,
    promql_metric_names,
)

pytestmark = pytest.mark.slow

ARCH = "Cnn6"
CHECKPOINT_NAME = "Cnn6_mAP=0.343.pth"  # the official file name, with our own weights
USER_ENV = {"PANNS_CHECKPOINT": f"/input/{CHECKPOINT_NAME}", "PANNS_MODELS": "/models/cnn6"}
READY_TIMEOUT_S = 180.0


def host_env(service_env: dict[str, str | None], mounts: dict[str, Path]) -> dict[str, str]:
    """The container environment on this machine: container paths mapped to tmp dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANNS_")}
    env["OMP_NUM_THREADS"] = "1"
    for name, value in service_env.items():
        value = USER_ENV.get(name) if value is None else value
        if value is None:
            continue
        for container, host in mounts.items():
            value = value.replace(container, str(host))
        env[name] = value
    return env


def compose_service_env(name: str, *overrides: Path) -> dict[str, str | None]:
    env = environment(load_compose(COMPOSE)["services"][name], USER_ENV)
    for path in overrides:
        service = load_compose(path)["services"].get(name, {})
        env.update(environment(service, USER_ENV))
    return env


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("volumes")
    paths = {
        "/models": root / "models",
        "/checkpoints": root / "checkpoints",
        "/input": root / "input",
    }
    for path in paths.values():
        path.mkdir()
    return paths


@pytest.fixture(scope="module")
def checkpoint(mounts: dict[str, Path]) -> Path:
    """Deterministic Cnn6 weights saved the way the official checkpoints are."""
    import torch

    from training.models import create_model

    torch.manual_seed(0)
    model = create_model(ARCH)
    path = mounts["/input"] / CHECKPOINT_NAME
    torch.save({"model": model.state_dict()}, path)
    return path


def run_model_step(mounts: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    command = load_compose(COMPOSE)["services"]["model"]["command"]
    assert command[0] == "python"
    env = host_env(compose_service_env("model"), mounts)
    return subprocess.run(
        [sys.executable, *command[1:]],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def bundle_state(bundle: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(bundle.iterdir())}


@pytest.fixture(scope="module")
def bundle(mounts: dict[str, Path], checkpoint: Path) -> Path:
    first = run_model_step(mounts)
    assert first.returncode == 0, first.stdout + first.stderr
    return mounts["/models"] / "cnn6"


def test_model_step_builds_a_verified_bundle_with_the_compose_variants(bundle: Path) -> None:
    from service.core.card import load_bundle

    card = load_bundle(bundle)
    assert card.arch == ARCH
    variants = compose_service_env("model")["PANNS_EXPORT_VARIANTS"] or ""
    assert {"fp32", *variants.split(",")} <= set(card.files)
    assert card.source.checkpoint == CHECKPOINT_NAME


def test_model_step_does_nothing_when_the_bundle_is_there(
    bundle: Path, mounts: dict[str, Path]
) -> None:
    before = bundle_state(bundle)
    start = time.monotonic()
    again = run_model_step(mounts)
    assert again.returncode == 0, again.stdout + again.stderr
    assert bundle_state(bundle) == before, "the second run rewrote the bundle"
    assert time.monotonic() - start < 60


def healthcheck(port: int) -> int:
    env = {**os.environ, "PANNS_PORT": str(port)}
    script = REPO_ROOT / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, timeout=30).returncode


def wait_ready(process: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            pytest.fail(
                f"the service exited with {process.returncode} before it was ready:\n{tail}"
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"/readyz not 200 after {READY_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def api(
    bundle: Path, mounts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """`python -m service` with the CPU deployment's `api` environment, on a free port."""
    command = load_compose(COMPOSE)["services"]["api"]["command"]
    env = host_env(compose_service_env("api", COMPOSE_CPU), mounts)
    assert env["PANNS_DEVICE"] == "cpu" and env["PANNS_MODELS"] == str(bundle)
    port = free_port()
    env["PANNS_PORT"] = str(port)  # 8000 inside the container; any free port here
    env["PANNS_HOST"] = "127.0.0.1"
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, *command[1:]], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", log_path)
        yield f"http://127.0.0.1:{port}", port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit too.
    output = log_path.read_text(encoding="utf-8", errors="replace")
    assert process.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert "Application shutdown complete" in output, output[-2000:]


def test_image_health_check_follows_readiness(api: tuple[str, int]) -> None:
    assert healthcheck(api[1]) == 0
    assert healthcheck(free_port()) == 1  # nothing listening: unhealthy


def wav_bytes(seconds: float, rate: int = 32000) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        rate,
        format="WAV",
        subtype="FLOAT",
    )
    return buffer.getvalue()


def scrape(base: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_dashboard_metrics_are_exposed_by_the_running_service(api: tuple[str, int]) -> None:
    base, _ = api
    response = httpx.post(f"{base}/v1/tag", files={"file": ("a.wav", wav_bytes(2.0))}, timeout=60)
    assert response.status_code == 200, response.text
    families = scrape(base)
    exposed = exposed_sample_names({name: f.type for name, f in families.items()})
    for title, expr in dashboard_exprs():
        missing = promql_metric_names(expr) - exposed
        assert not missing, f"panel {title!r}: {sorted(missing)} not on /metrics"
    samples = {s.name for f in families.values() for s in f.samples}
    for name in (
        "panns_requests_total",
        "panns_request_duration_seconds_bucket",
        "panns_batch_size_bucket",
        "panns_compute_seconds_bucket",
        "panns_audio_seconds_total",
        "panns_model_info",
    ):
        assert name in samples, f"{name} has no sample after a tagging request"
