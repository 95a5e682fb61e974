"""The lone round-trip benchmark against real servers: the bare ASGI floor, a minimal FastAPI
app and the service, one short run (so it keeps working as the service changes; no timing
asserted beyond each figure being a real one)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import lone_floor
from benchmarks.nearfree import build_nearfree_bundle


def test_one_short_run_times_every_server_in_both_modes(tmp_path: Path) -> None:
    bundle = build_nearfree_bundle(tmp_path / "nf")
    out = tmp_path / "lone.json"
    result = lone_floor.main(
        ["--bundle", str(bundle), "--requests", "5", "--rounds", "1", "--json", str(out)]
    )
    assert out.exists()
    for mode in ("back_to_back", "paused"):
        p50 = result["p50_ms"][mode]
        assert set(p50) == {"floor", "fastapi", "service"}
        assert all(0 < ms < 10_000 for ms in p50.values())
        margins = result["margins"][mode]
        assert margins["service_over_floor_ms"] == round(p50["service"] - p50["floor"], 3)


def test_the_floor_answers_as_large_as_the_service_does() -> None:
    # 527 scores and the rest of one file's /v1/tag answer: about 11 KB
    assert 11_000 <= len(lone_floor.ANSWER) <= 12_000
