"""The engine-ceiling benchmark drives the real engine process (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import engine_ceiling
from benchmarks.nearfree import build_nearfree_bundle


def test_one_short_run_reports_the_engine_and_its_loop(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.json"
    args = ["--batch", "4", "--procs", "2", "--inflight", "6", "--duration-s", "1"]
    result = engine_ceiling.main([*args, "--warmup-s", "0.3", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    run = result["by_max_batch"]["4"]
    assert run["windows_per_s"] > 0 and 1 <= run["mean_batch"] <= 4
    assert 0 < run["loop_cpu_ms_per_window"] <= run["engine_cpu_ms_per_window"]
    assert run["client_cpu_ms_per_window"] > 0 and run["run_ms_per_window"] > 0


def test_an_engine_that_cannot_load_fails_the_run_at_once(tmp_path: Path) -> None:
    """No hang and nothing left running: the clients say why, the engine is stopped."""
    bundle = build_nearfree_bundle(tmp_path / "broken", clip_s=1.0)
    with (bundle / "model.onnx").open("ab") as graph:
        graph.write(b"not a graph")  # the card's size and SHA-256 no longer match
    args = ["--bundle", str(bundle), "--batch", "2", "--duration-s", "1", "--warmup-s", "0.2"]
    with pytest.raises(RuntimeError, match="the engine failed to load: BundleError"):
        engine_ceiling.main([*args, "--ready-timeout-s", "60"])
