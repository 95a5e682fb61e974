"""The engine-ceiling benchmark drives the real engine process (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import engine_ceiling


def test_one_short_run_reports_the_engine_and_its_loop(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.json"
    args = ["--batch", "4", "--procs", "2", "--inflight", "6", "--duration-s", "1"]
    result = engine_ceiling.main([*args, "--warmup-s", "0.3", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    run = result["by_max_batch"]["4"]
    assert run["windows_per_s"] > 0 and 1 <= run["mean_batch"] <= 4
    assert 0 < run["loop_cpu_ms_per_window"] <= run["engine_cpu_ms_per_window"]
    assert run["client_cpu_ms_per_window"] > 0 and run["run_ms_per_window"] > 0
