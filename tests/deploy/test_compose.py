"""docker-compose.yml and its overrides: services, order, health checks, volumes, the GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.deploy_files import (
    COMPOSE,
    COMPOSE_CPU,
    COMPOSE_FILES,
    COMPOSE_REPLICAS,
    Reset,
    environment,
    interpolate,
    load_compose,
)
from tests.deploy.kube_files import as_settings


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"no `{name}` service; have {sorted(services)}"
    return services[name]


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"model", "api", "prometheus", "grafana"}
    assert {"models", "checkpoints", "prometheus-data", "grafana-data"} <= set(compose["volumes"])


def test_model_step_is_one_shot_into_the_models_volume(compose: dict[str, Any]) -> None:
    model = _service(compose, "model")
    assert model["command"] == ["python", "-m", "model_export.ensure"]
    assert model["build"]["dockerfile"] == "docker/model-builder.Dockerfile"
    assert model.get("restart") == "no"
    assert "models:/models" in model["volumes"]
    env = environment(model, {})
    assert env["PANNS_MODEL"] is None  # passed through; the model step defaults to Cnn14
    assert env["PANNS_EXPORT_VARIANTS"] == "fp16"
    assert env["PANNS_CHECKPOINT_DIR"] == "/checkpoints"
    assert "PANNS_CHECKPOINT" in env and env["PANNS_CHECKPOINT"] is None  # passed through
    assert "checkpoints:/checkpoints" in model["volumes"]


def test_api_waits_for_the_model_and_reads_it_read_only(compose: dict[str, Any]) -> None:
    api = _service(compose, "api")
    assert api["depends_on"]["model"]["condition"] == "service_completed_successfully"
    assert "models:/models:ro" in api["volumes"]
    assert api["command"] == ["python", "-m", "service"]
    assert api["build"]["dockerfile"] == "docker/service-gpu.Dockerfile"
    assert api["restart"] in ("unless-stopped", "always", "on-failure")
    assert api.get("init") is True


def test_model_and_api_agree_on_the_bundle_directory(compose: dict[str, Any]) -> None:
    for env in ({}, {"PANNS_MODELS": "/models/cnn10"}):
        model_env = environment(_service(compose, "model"), env)
        api_env = environment(_service(compose, "api"), env)
        assert model_env["PANNS_MODELS"] == api_env["PANNS_MODELS"]
        first = api_env["PANNS_MODELS"].split(",")[0]
        assert first.startswith("/models/"), "the bundle must live in the `models` volume"


def test_api_gpu_reservation(compose: dict[str, Any]) -> None:
    devices = _service(compose, "api")["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert environment(_service(compose, "api"), {})["PANNS_DEVICE"] == "cuda"


def test_api_health_check_and_port(compose: dict[str, Any]) -> None:
    api = _service(compose, "api")
    check = api["healthcheck"]
    assert check["test"] == ["CMD", "python", "/app/healthcheck.py"]
    assert check["start_period"] and check["interval"] and check["retries"] >= 1
    env = environment(api, {})
    assert env["PANNS_PORT"] == "8000" and env["PANNS_HOST"] == "0.0.0.0"
    assert [interpolate(p, {}) for p in api["ports"]] == ["0.0.0.0:8000:8000"]
    assert [interpolate(p, {"API_PORT": "9000"}) for p in api["ports"]] == ["0.0.0.0:9000:8000"]


def test_every_service_reads_the_optional_env_file(compose: dict[str, Any]) -> None:
    for name in ("model", "api"):
        entries = _service(compose, name)["env_file"]
        assert {"path": ".env", "required": False} in entries, name


def test_monitoring_services(compose: dict[str, Any]) -> None:
    prometheus = _service(compose, "prometheus")
    assert (
        "./docker/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (prometheus["volumes"])
    )
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    grafana = _service(compose, "grafana")
    assert "./docker/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./docker/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    for service in (prometheus, grafana):
        assert service["image"].split(":")[1] not in ("", "latest"), "pin monitoring images"
        assert interpolate(service["ports"][0], {}).startswith("127.0.0.1:")


def test_cpu_override_swaps_the_image_and_drops_the_gpu() -> None:
    api = load_compose(COMPOSE_CPU)["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/service-cpu.Dockerfile"
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == Reset("reset", [])
    assert api["environment"]["PANNS_DEVICE"] == "cpu"
    assert api["image"] != load_compose(COMPOSE)["services"]["api"]["image"]


def test_replicas_override_puts_nginx_in_front() -> None:
    services = load_compose(COMPOSE_REPLICAS)["services"]
    api = services["api"]
    assert api["ports"] == Reset("reset", [])
    assert interpolate(str(api["deploy"]["replicas"]), {}) == "2"
    assert interpolate(str(api["deploy"]["replicas"]), {"API_REPLICAS": "4"}) == "4"
    lb = services["lb"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert "./docker/nginx/panns.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert [interpolate(p, {}) for p in lb["ports"]] == ["0.0.0.0:8000:8000"]


def test_workers_default_to_the_cores_and_to_one_per_replica(compose: dict[str, Any]) -> None:
    """One api: every core a front (the service's 0); replicas: one process each unless set,
    so that N replicas do not each start a front per core of the host."""
    replicas = load_compose(COMPOSE_REPLICAS)["services"]["api"]
    for service, default in ((_service(compose, "api"), 0), (replicas, 1)):
        for env, want in (({}, default), ({"PANNS_WORKERS": "3"}, 3)):
            workers = environment(service, env)["PANNS_WORKERS"]
            assert workers is not None and as_settings({"PANNS_WORKERS": workers}).workers == want
    assert as_settings({"PANNS_WORKERS": "0"}).worker_count >= 1


def test_nginx_config_targets_the_api_replicas() -> None:
    conf = (REPO_ROOT / "docker" / "nginx" / "panns.conf").read_text(encoding="utf-8")
    assert "server api:8000 resolve" in conf
    assert "resolver 127.0.0.11" in conf
    assert "listen 8000;" in conf
    assert "proxy_pass http://panns_api;" in conf
    # The service limits uploads itself while reading; nginx's default 1 MB must not apply.
    assert "client_max_body_size 0;" in conf and "proxy_request_buffering off;" in conf


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.parametrize(
    "files",
    [(COMPOSE,), (COMPOSE, COMPOSE_CPU), (COMPOSE, COMPOSE_CPU, COMPOSE_REPLICAS)],
    ids=["gpu", "cpu", "cpu-replicas"],
)
def test_docker_compose_config_accepts_the_files(files: tuple[Any, ...]) -> None:
    """`docker compose config` validates without an engine, when the plugin is installed."""
    command = _docker_compose()
    if command is None:
        pytest.skip("the docker compose plugin is not installed here")
    args = [*command, "--project-directory", str(REPO_ROOT)]
    for path in files:
        args += ["-f", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANNS_", "API_"))}
    result = subprocess.run(
        [*args, "config", "--quiet"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_compose_files_are_all_checked() -> None:
    assert sorted(REPO_ROOT.glob("docker-compose*.yml")) == sorted(COMPOSE_FILES)
