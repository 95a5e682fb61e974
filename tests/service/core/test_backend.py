"""The ONNX Runtime engine on a real bundle: provider/variant choice, batches, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.core.backends import BackendOptions
from service.core.backends.ort import CPU, OrtBackend
from service.core.card import BundleError
from tests.service.conftest import noise, run_bundle, settings_for


def test_engine_runs_batches_like_single_clips(tagger_bundle: Path) -> None:
    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1))
    assert (engine.provider, engine.precision) == (CPU, "fp32")
    clips = [noise(2.0, seed=s) for s in range(3)]
    out = engine.run(np.stack(clips))
    assert set(out) == {"clipwise", "embedding"} and out["clipwise"].shape == (3, 527)
    for row, clip in zip(out["clipwise"], clips, strict=True):
        np.testing.assert_allclose(row, run_bundle(tagger_bundle, clip)["clipwise"], atol=1e-5)


def test_missing_variant_or_device_is_a_clear_error(tagger_bundle: Path) -> None:
    with pytest.raises(BundleError, match="PANNS_PRECISION=int8 but bundle"):
        OrtBackend(tagger_bundle, BackendOptions(device="cpu", precision="int8"))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BundleError, match="PANNS_DEVICE=cuda"):
            OrtBackend(tagger_bundle, BackendOptions(device="cuda"))


def test_a_corrupted_bundle_is_refused(tagger_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tagger_bundle.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    graph = next(broken.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(BundleError, match="truncated"):
        OrtBackend(broken)


def test_main_refuses_a_missing_bundle_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {"PANNS_MODELS": str(tmp_path / "nothing"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "not a model bundle" in proc.stderr and "make bundle" in proc.stderr
    assert settings_for(tmp_path).model_dirs == [tmp_path]
