"""The training loop: exact resume, checkpoint format, logs (TensorBoard too), the report
and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.config import TrainConfig
from training.train import Trainer, main

SAMPLE_RATE = 32000
LABELS = ["low", "mid", "high"]


class ToneSet:
    """A tiny in-memory labelled data set: one or two tones per clip, 0.4 s."""

    def __init__(self, clips: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = list(LABELS)
        self.sample_rate = SAMPLE_RATE
        self.targets = np.zeros((clips, 3), dtype=np.float32)
        self.waves = []
        t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
        for i in range(clips):
            classes = rng.choice(3, size=1 + (i % 2), replace=False)
            wave = 0.01 * rng.standard_normal(len(t))
            for k in classes:
                self.targets[i, k] = 1.0
                wave += 0.3 * np.sin(2 * np.pi * (300 * 4**k) * t)
            self.waves.append(wave.astype(np.float32))

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.waves[index], self.targets[index]


# Not the paper's recipe: a warm-up, a schedule and clipping, which resuming must continue.
RECIPE = {"warmup_steps": 2, "lr_schedule": "cosine", "min_lr": 1e-5, "grad_clip": 1.0}


class CrashingToneSet(ToneSet):
    """Fails while loading the clip after ``clips`` of them: a run that dies mid-way."""

    def __init__(self, clips: int, seed: int, crash_after: int) -> None:
        super().__init__(clips, seed)
        self.loaded, self.crash_after = 0, crash_after

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        self.loaded += 1
        if self.loaded > self.crash_after:
            raise RuntimeError("simulated crash")
        return super().__getitem__(index)


def _config(out: Path, steps: int, **overrides: object) -> TrainConfig:
    base = {
        "arch": "MobileNetV1",
        "out": str(out),
        "steps": steps,
        "batch_size": 2,
        "eval_every": 2,
        "workers": 0,
        "device": "cpu",
        "seed": 7,
        "eval_batch_size": 4,
        "crop_seconds": 0.35,
        **RECIPE,
    }
    base.update(overrides)
    return TrainConfig.from_dict(base)


def _trainer(config: TrainConfig) -> Trainer:
    return Trainer(config, train_set=ToneSet(12, seed=1), eval_set=ToneSet(6, seed=2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    straight = _trainer(_config(root / "straight", steps=4))
    straight.fit()
    # Dies loading batch 4 (4 clips a batch with mixup): checkpointed at step 2, step 3 logged.
    first = Trainer(
        _config(root / "split", steps=4),
        train_set=CrashingToneSet(12, seed=1, crash_after=12),
        eval_set=ToneSet(6, seed=2),
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit()
    second = _trainer(_config(root / "split", steps=4))
    second.resume()
    batch_after_resume = second.sampler.next_batch()
    second.sampler.load_state_dict(
        torch.load(root / "split/checkpoints/latest.pth", weights_only=True)["sampler"]
    )
    second.fit()
    return {
        "straight": root / "straight",
        "split": root / "split",
        "batch_after_resume": batch_after_resume,
    }  # type: ignore[dict-item]


def _load(run: Path, name: str = "latest") -> dict:
    return torch.load(run / "checkpoints" / f"{name}.pth", map_location="cpu", weights_only=True)


def test_resume_gives_identical_weights(runs: dict[str, Path]) -> None:
    a, b = _load(runs["straight"]), _load(runs["split"])
    assert a["iteration"] == b["iteration"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["sampler"] == b["sampler"]
    exp_a = a["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(exp_a, b["optimizer"]["state"][0]["exp_avg"])


def test_resume_continues_with_the_next_batch(runs: dict[str, Path], tmp_path: Path) -> None:
    # What the uninterrupted run drew as its third batch is what the resumed run draws first.
    reference = _trainer(_config(tmp_path / "ref", steps=4))
    it = iter(reference.sampler)
    batches = [next(it) for _ in range(3)]
    assert runs["batch_after_resume"] == batches[2]  # type: ignore[comparison-overlap]


def test_checkpoint_format_and_logs(runs: dict[str, Path]) -> None:
    from training.checkpoints import load_checkpoint, read_checkpoint

    run = runs["straight"]
    raw = read_checkpoint(run / "checkpoints" / "latest.pth")
    for key in ("model", "iteration", "optimizer", "sampler", "config", "arch", "model_args"):
        assert key in raw, key
    assert raw["arch"] == "MobileNetV1"
    assert raw["model_args"] == {"classes_num": 3}
    assert raw["labels"] == LABELS
    model = load_checkpoint(run / "checkpoints" / "best.pth")
    assert model.classes_num == 3 and not model.training
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "MobileNetV1" and config["model_args"] == {"classes_num": 3}
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 4]
    for line in lines:
        assert 0.0 <= line["mAP"] <= 1.0 and 0.0 <= line["mAUC"] <= 1.0
        assert np.isfinite(line["d_prime"]) and line["train_loss"] > 0


def _events(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_tensorboard_events_read_back(runs: dict[str, Path]) -> None:
    """TensorBoard's own reader finds every curve; the numbers are the run's."""
    from training.schedule import lr_at

    run = runs["straight"]
    events = _events(run)
    tags = events.Tags()
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/clips_per_second",
        "eval/mAP",
        "eval/mAUC",
        "eval/d_prime",
    } <= set(tags["scalars"])
    assert tags["histograms"] == ["eval/class_AP"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    config = TrainConfig.load(run / "config.json")
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == pytest.approx([lr_at(step, config) for step in range(4)], rel=1e-6)
    assert lrs[0] < lrs[1] and lrs[3] < lrs[2]  # warm-up, then the cosine decay
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for tag, key in (("eval/mAP", "mAP"), ("eval/d_prime", "d_prime")):
        points = events.Scalars(tag)
        assert [e.step for e in points] == [2, 4]
        assert [e.value for e in points] == pytest.approx([x[key] for x in lines], rel=1e-5)
    histogram = events.Histograms("eval/class_AP")[-1].histogram_value
    assert histogram.num == 3 and 0.0 <= histogram.min <= histogram.max <= 1.0


def test_resumed_run_has_one_clean_curve(runs: dict[str, Path]) -> None:
    """The step the crashed process logged after its last checkpoint is dropped on resume."""
    assert len(list(runs["split"].glob("events.out.tfevents.*"))) == 2
    split, straight = _events(runs["split"]), _events(runs["straight"])
    assert [e.step for e in split.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in split.Scalars("train/loss")] == pytest.approx(
        [e.value for e in straight.Scalars("train/loss")], rel=1e-6
    )


def test_report_plots_two_runs(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from training.report import main as report

    assert report([str(runs["straight"]), str(runs["split"])]) == 0
    out = capsys.readouterr().out
    curves = runs["straight"].parent / "curves_straight_vs_split.png"
    figures = [curves, runs["straight"] / "per_class.png", runs["split"] / "per_class.png"]
    for figure in figures:
        assert figure.stat().st_size > 10_000, figure
        with Image.open(figure) as image:
            image.load()  # decodes every pixel
            assert image.format == "PNG" and image.width >= 1000 and image.height >= 400
        assert str(figure) in out
    assert "straight: 2 evaluations up to step 4" in out
    assert "all 3 scored classes" in out
    for label in LABELS:
        assert re.search(rf"^\s+\d\s+\d\.\d{{3}}\s+\S*\s+\d+\s+{label}$", out, re.MULTILINE)


def test_report_names_the_best_and_worst_classes(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from training.report import main as report

    assert report([str(runs["straight"]), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert (runs["straight"] / "curves.png").stat().st_size > 10_000
    best, worst = out.index("best 1\n"), out.index("worst 1\n")
    assert best < worst and "all 3" not in out
    assert "  1  " in out[best:worst] and "  3  " in out[worst:]


def test_report_explains_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    from training.report import main as report

    with pytest.raises(ValueError, match=r"no log\.jsonl"):
        report([str(tmp_path)])


def test_progress_bar_and_no_tensorboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One loss key in the progress bar throughout (it was loss=, then train_loss=)."""
    _trainer(_config(tmp_path / "quiet", steps=2, tensorboard=False)).fit()
    bar = capsys.readouterr().err
    assert re.search(r"\bloss=\d", bar) and "mAP=" in bar, bar
    assert "train_loss" not in bar, bar
    assert not list((tmp_path / "quiet").glob("events.out.tfevents.*"))
    assert (tmp_path / "quiet" / "log.jsonl").is_file()
    config = json.loads((tmp_path / "quiet" / "config.json").read_text())
    assert config["tensorboard"] is False
    assert {k: config[k] for k in RECIPE} == RECIPE


def test_cli_rejects_missing_train_data(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--train is required"):
        main(["--arch", "Cnn6", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--resume", "--out", str(tmp_path)])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="sampler"):
        TrainConfig(sampler="weighted")
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def _write_pack(path: Path, clips: int = 16) -> None:
    """A tiny pack in the layout of ``python -m training.data pack`` (AudioSet columns)."""
    import h5py

    data = ToneSet(clips, seed=3)
    target = np.zeros((clips, 527), dtype=bool)
    target[:, :3] = data.targets > 0.5
    with h5py.File(path, "w") as f:
        f.create_dataset("waveform", data=np.round(np.stack(data.waves) * 32767).astype(np.int16))
        f.create_dataset("target", data=target)
        f.create_dataset("audio_name", data=[f"clip{i}".encode() for i in range(clips)])
        f.attrs["sample_rate"] = SAMPLE_RATE


@pytest.mark.slow
def test_torchrun_two_ranks_train_and_resume(tmp_path: Path) -> None:
    """DDP on CPU (gloo): two ranks share the sampler's global batch, rank 0 writes."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    pack = tmp_path / "tones.h5"
    _write_pack(pack)
    out = tmp_path / "ddp"
    common = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "training.train",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = [
        *common,
        "--arch",
        "MobileNetV1",
        "--train",
        str(pack),
        "--eval",
        str(pack),
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--crop-seconds",
        "0.35",
    ]
    for cmd in (first, [*common, "--resume", "--steps", "3"]):
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 3]  # one writer: no duplicate lines
    state = _load(out)
    assert state["iteration"] == 3 and len(state["rank_states"]) == 2
    assert state["sampler"]["global_batch"] == 2 * 2 * 2  # batch x mixup pairs x ranks
    assert state["config"]["steps"] == 3 and "labels" not in state
