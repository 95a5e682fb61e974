"""Every PANNS_ variable the deployment sets is one the service or the model step reads."""

from __future__ import annotations

import re

import pytest

from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.deploy.deploy_files import (
    COMPOSE_FILES,
    DOCKERFILES,
    compose_variables,
    env_example_names,
    load_compose,
    parse_dockerfile,
)

# Where the model step (`python -m model_export.ensure`) and the checkpoint download read
# their environment; the variables are collected from the source, not listed by hand.
MODEL_STEP_SOURCES = ("model_export", "training/checkpoints")


def service_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "PANNS_"
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def model_step_variables() -> set[str]:
    found: set[str] = set()
    for rel in MODEL_STEP_SOURCES:
        path = REPO_ROOT / rel
        if not path.exists():
            pytest.fail(f"{rel} is missing: the model step cannot run")
        for py in [path] if path.is_file() else sorted(path.rglob("*.py")):
            found.update(re.findall(r"\bPANNS_[A-Z0-9_]+\b", py.read_text(encoding="utf-8")))
    return found


def deployment_variables() -> dict[str, set[str]]:
    """{where: PANNS_ names set there} over compose, overrides, Dockerfiles and .env.example."""
    where: dict[str, set[str]] = {}
    for path in COMPOSE_FILES:
        names = {v for v in compose_variables(path) if v.startswith("PANNS_")}
        for service in load_compose(path)["services"].values():
            env = service.get("environment") or {}
            keys = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
            names.update(k for k in keys if k.startswith("PANNS_"))
        where[path.name] = names
    for path in DOCKERFILES:
        where[path.name] = {n for n in parse_dockerfile(path).env_names() if n.startswith("PANNS_")}
    where[".env.example"] = {n for n in env_example_names() if n.startswith("PANNS_")}
    return where


def test_every_panns_variable_is_read_by_the_service_or_the_model_step() -> None:
    known = service_variables() | model_step_variables()
    unknown = {
        f"{where}: {name}"
        for where, names in deployment_variables().items()
        for name in names
        if name not in known
    }
    assert not unknown, f"not a service setting nor a model-step variable: {sorted(unknown)}"


def test_model_step_variables_are_the_agreed_ones() -> None:
    assert {"PANNS_MODEL", "PANNS_CHECKPOINT", "PANNS_MODELS"} <= model_step_variables()


def test_env_example_documents_every_service_setting() -> None:
    documented = env_example_names()
    missing = sorted(service_variables() - documented)
    assert not missing, f".env.example does not document {missing}"


def test_env_example_shows_the_service_defaults() -> None:
    """Its values are the defaults, except where Compose sets its own (device, bundle dir)."""
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    shown = dict(re.findall(r"^#?\s*PANNS_([A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    wrong = []
    for name, field in Settings.model_fields.items():
        key = name.upper()
        if key in ("DEVICE", "MODELS") or key not in shown:
            continue
        value = getattr(Settings(**{name: shown[key]}), name)
        if value != field.default:
            wrong.append(f"PANNS_{key}={shown[key]} (default {field.default!r})")
    assert not wrong, wrong


def test_env_example_documents_the_compose_variables() -> None:
    used = set().union(*(compose_variables(p) for p in COMPOSE_FILES))
    missing = sorted(used - env_example_names())
    assert not missing, f".env.example does not document {missing}"


def test_compose_only_variables_do_not_look_like_settings() -> None:
    """Ports, passwords and image tags are interpolation-only: no PANNS_ prefix."""
    compose_only = {"API_PORT", "API_BIND", "API_REPLICAS", "MONITORING_BIND", "IMAGE_TAG"}
    assert compose_only <= env_example_names()
    assert not any(name.startswith("PANNS_") for name in compose_only)
