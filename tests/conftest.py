"""Shared test fixtures: where ``../shared`` is, and skipping cleanly when it is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PANNS_SHARED_DIR", REPO_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ``../shared``; skips the calling test when it does not exist."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared reference material is not beside the repo")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@cache
def reference_fill() -> ModuleType:
    """``../shared/reference/fill.py``, the deterministic weight filler (skips when absent)."""
    path = shared_path("reference", "fill.py")
    spec = importlib.util.spec_from_file_location("panns_reference_fill", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def reference_manifest() -> dict[str, Any]:
    """``../shared/reference/manifest.json`` (skips when absent)."""
    manifest: dict[str, Any] = json.loads(shared_path("reference", "manifest.json").read_text())
    return manifest


# Bundles exported once per session from zoo models with deterministic weights (see
# tests/service/conftest.py), shared by the service, CLI and benchmark tests.
@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def tagger_bundle(bundle_root: Path) -> Path:
    from tests.service.conftest import TAGGER, export

    return export(TAGGER, bundle_root)


@pytest.fixture(scope="session")
def variants_bundle(bundle_root: Path) -> Path:
    from tests.service.conftest import TAGGER, export

    return export(TAGGER, bundle_root, variants=True)


@pytest.fixture(scope="session")
def sed_bundle(bundle_root: Path) -> Path:
    from tests.service.conftest import SED, export

    return export(SED, bundle_root)


def free_port() -> int:
    """A local port nobody listens on: bound to pick it, then released for a subprocess."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
