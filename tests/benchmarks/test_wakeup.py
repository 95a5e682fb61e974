"""The wake-up benchmark runs and reports both settings (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import wakeup


def test_both_settings_are_measured_and_written(tmp_path: Path) -> None:
    out = tmp_path / "wakeup.json"
    result = wakeup.main(["--rounds", "5", "--busy-ms", "2", "--gap-ms", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["work_after_gap_vs_back_to_back"] > 0
    for key in ("answer_at_once", "answer_after_2_ms", "work_back_to_back", "work_after_gap"):
        figures = result[key]
        assert 0 < figures["p50_us"] <= figures["p90_us"] <= figures["max_us"]
