"""The staging benchmark times both ways on the real Staging class (no timing asserted)."""

from __future__ import annotations

from benchmarks import staging


def test_both_ways_are_timed_for_both_types() -> None:
    result = staging.main(["--batches", "2,3", "--repeats", "2", "--window", "1000"])
    for dtype in ("float32", "float16"):
        for batch in ("2", "3"):
            row = result[dtype][batch]
            assert row["stack_then_stage_ms_per_window"] > 0
            assert row["stage_windows_ms_per_window"] > 0 and row["ratio"] > 0
