"""The GPU check's ``variants`` stage, run end to end on this machine's CPU: ``_run_all`` with
the service's real engine on a near-free bundle (on CPU, so nothing pads and no graph is
captured), and the summary printed from what it wrote. A GPU host runs it once per lease: a
slip in this path would cost the lease's measurements."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.nearfree import build_nearfree_bundle
from service.core.backends import BackendOptions
from service.core.backends.ort import OrtBackend
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts" / "device"))
import check_report
import engine_variants


def _on_cpu(path: Path, batch: int, **extra: Any) -> OrtBackend:
    """The stage's engine, on this machine's CPU (CUDA options are ignored there)."""
    return OrtBackend(path, BackendOptions(device="cpu", max_batch=batch, **extra))


def test_variants_run_end_to_end_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = build_nearfree_bundle(tmp_path / "nearfree", clip_s=1.0)
    monkeypatch.setattr(engine_variants, "_backend", _on_cpu)  # the stage asks for CUDA
    pool = np.random.default_rng(0).standard_normal((4, 32000)).astype(np.float32)
    pools = {b: pool[np.arange(b) % 4] for b in (4, 8)}
    rows: dict[str, dict[str, Any]] = {"4": {}, "8": {}}
    deadline = time.monotonic() + 60
    mixed = engine_variants._run_all(bundle, pools, 0.05, deadline, False, "", rows)

    assert mixed["sizes"] == engine_variants.INTERLEAVED
    assert mixed["service_engine"]["windows_per_s"] > 0 < mixed["one_session"]["windows_per_s"]
    heuristic = mixed["one_session_heuristic"]
    assert heuristic["windows_per_s"] > 0 < heuristic["full_batch"]["clips_per_s"]
    assert heuristic["max_abs_diff_vs_plain"] == 0.0  # on CPU the search changes nothing
    for batch, row in rows.items():
        assert row["padded_parity"] == {
            "rows": int(batch) - 1,
            "padded_to": int(batch) - 1,  # on CPU nothing is padded
            "max_abs_diff_vs_plain": 0.0,
        }
        for name in (
            "plain_fp16",
            "pinned_inflight1",
            "pinned_inflight2",
            "nhwc_inflight2",
            "cuda_graph_inflight2",
        ):
            assert row[name]["clips_per_s"] > 0, name
        assert "offers no TensorrtExecutionProvider" in row["tensorrt_fp16_inflight2"]["skipped"]
    check_report.summary({"variants": {"batches": rows, "interleaved": mixed}})
    printed = capsys.readouterr().out
    assert "variants batch   8:" in printed and "heuristic search {'windows_per_s'" in printed


def test_a_variant_that_fails_to_load_is_recorded_and_the_rest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An option the host's ORT refuses (it cannot be made to here: the CPU ignores CUDA
    options) costs its own row only, not the stage."""
    bundle = build_nearfree_bundle(tmp_path / "nearfree", clip_s=1.0)

    def refusing(path: Path, batch: int, **extra: Any) -> OrtBackend:
        if "prefer_nhwc" in extra or "cudnn_search" in extra:
            raise RuntimeError("unknown provider option")
        return _on_cpu(path, batch, **extra)

    monkeypatch.setattr(engine_variants, "_backend", refusing)
    pool = np.random.default_rng(0).standard_normal((2, 32000)).astype(np.float32)
    rows: dict[str, dict[str, Any]] = {"2": {}}
    deadline = time.monotonic() + 60
    mixed = engine_variants._run_all(bundle, {2: pool}, 0.05, deadline, False, "", rows)
    assert "unknown provider option" in mixed["one_session_heuristic"]["skipped"]
    assert "unknown provider option" in rows["2"]["nhwc_inflight2"]["skipped"]
    assert rows["2"]["cuda_graph_inflight2"]["clips_per_s"] > 0  # the stage went on
