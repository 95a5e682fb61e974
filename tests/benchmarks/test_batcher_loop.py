"""The batcher-loop benchmark runs both ways in to the batcher and reports each (no timing
asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import batcher_loop


def test_both_paths_are_measured_and_written(tmp_path: Path) -> None:
    out = tmp_path / "loop.json"
    result = batcher_loop.main(["--windows", "300", "--repeats", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    for path in batcher_loop.PATHS:
        assert len(result["runs"][path]) == 1 and result["median"][path] > 0
    assert result["enqueue_vs_task"] > 0
