"""The front-end benchmark's pieces against the real service: the near-free bundle, and one
short load run (so the benchmark keeps working as the service changes; no timing asserted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import frontend, ratios
from benchmarks.nearfree import build_nearfree_bundle, reference
from benchmarks.stages import load_engine
from service.core.card import load_bundle


def test_nearfree_bundle_serves_what_it_claims(tmp_path: Path) -> None:
    bundle = build_nearfree_bundle(tmp_path / "nf", sample_rate=16000, clip_s=2.0)
    card = load_bundle(bundle)  # every file's size and SHA-256 checked
    assert (card.sample_rate, card.clip_samples, len(card.labels)) == (16000, 32000, 527)
    assert set(card.files) == {"fp32", "fp16"}
    clips = np.random.default_rng(3).uniform(-0.5, 0.9, (3, 32000)).astype(np.float32)
    want = reference(clips)
    for precision, tolerance in (("fp32", 1e-6), ("fp16", 2e-3)):
        got = load_engine(bundle, device="cpu", precision=precision).run(clips)
        assert np.abs(got["clipwise"] - want["clipwise_output"]).max() < tolerance
        assert np.abs(got["embedding"] - want["embedding"]).max() < tolerance * 10
    # the scores differ from class to class and follow the audio's mean
    assert np.ptp(want["clipwise_output"][0]) > 0.5
    assert not np.allclose(want["clipwise_output"][0], want["clipwise_output"][1])


def test_one_short_load_run() -> None:
    result = frontend.main(
        [
            "--workers",
            "1",
            "--formats",
            "wav32k,pcm",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.3",
            "--procs",
            "1",
            "--connections",
            "2",
            "--clips",
            "2",
            "--clip-s",
            "2",
            "--no-stages",
        ]
    )
    wav = result["load"]["1"]["wav32k"]
    assert wav["supported"] and wav["ok"] > 0 and set(wav["statuses"]) == {"200"}
    assert wav["server_cpu_ms_per_clip"] > 0 and wav["server_processes"] >= 1
    assert set(wav["server_cpu_ms_per_clip_by_role"]) == {"main"}  # one process: all of it
    loop = wav["server_loop_cpu_ms_per_clip_by_role"]["main"]
    assert 0 < loop <= wav["server_cpu_ms_per_clip_by_role"]["main"]  # its loop is a part
    assert wav["served_by"]["provider"] == "CPUExecutionProvider"
    assert wav["server_rss_mb"] > 0 and wav["server_rss_idle_mb"] > 0
    assert wav["p50_ms"] <= wav["p95_ms"] <= wav["p99_ms"] <= wav["max_ms"]
    # the service's own GC pauses in the window: each generation present, none negative
    assert set(wav["gc"]) == {"0", "1", "2"}
    assert all(g["collections"] >= 0 and g["ms_per_clip"] >= 0 for g in wav["gc"].values())
    ceiling = result["machine_scaling"]
    assert ceiling["processes"] == 2 and len(ceiling["per_round"]) == 1
    assert 0.5 < ceiling["median"] < 2.5  # two processes of a Python loop vs one, here
    pcm = result["load"]["1"]["pcm"]
    assert pcm["supported"] or pcm["status"] == 415
    assert result["machine"]["cpus"] >= 1


def _round(one: float, two: float) -> dict[str, dict[str, Any]]:
    return {"1": {"wav32k": {"clips_per_s": one}}, "2": {"wav32k": {"clips_per_s": two}}}


def test_scaling_is_the_median_of_the_rounds_ratios() -> None:
    """Rounds measured minutes apart: each round's ratio stands alone, the median sums up."""
    rounds = [_round(100, 150), _round(200, 250), _round(100, 120)]
    out = ratios.scaling(rounds, ["1", "2"])
    assert out["per_round"] == {"wav32k": {"2": [1.5, 1.25, 1.2]}}
    assert out["wav32k"] == {"2": 1.25} and out["baseline_workers"] == "1"
    assert "per_round" not in ratios.scaling(rounds[:1], ["1", "2"])
    assert ratios.scaling([_round(0, 10)], ["1", "2"])["wav32k"] == {"2": None}


def test_nearfree_frame_scores_have_a_decision_level_models_shape(tmp_path: Path) -> None:
    """``framewise=True``: 100 frames per second at 32 kHz, each the clip's scores."""
    bundle = build_nearfree_bundle(tmp_path / "nf", clip_s=1.0, fp16=False, framewise=True)
    card = load_bundle(bundle)
    assert card.frames_per_second == 100.0
    assert [o.kind for o in card.outputs] == ["clipwise", "embedding", "framewise"]
    clips = np.random.default_rng(4).uniform(-0.5, 0.9, (2, 32000)).astype(np.float32)
    got = load_engine(bundle, device="cpu", precision="fp32").run(clips)
    assert got["framewise"].shape == (2, 101, 527)
    want = reference(clips)["framewise_output"]
    assert np.abs(got["framewise"] - want).max() < 1e-6
    np.testing.assert_array_equal(got["framewise"][:, 50], got["clipwise"])
