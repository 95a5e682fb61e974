"""The training loop: exact resume, checkpoint format, logs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

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


def _config(out: Path, steps: int, **overrides: object) -> TrainConfig:
    base = {"arch": "MobileNetV1", "out": str(out), "steps": steps, "batch_size": 2,
            "eval_every": 2, "workers": 0, "device": "cpu", "seed": 7, "eval_batch_size": 4,
            "crop_seconds": 0.35}
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
    first = _trainer(_config(root / "split", steps=2))
    first.fit()
    second = _trainer(_config(root / "split", steps=4))
    second.resume()
    batch_after_resume = second.sampler.next_batch()
    second.sampler.load_state_dict(torch.load(root / "split/checkpoints/latest.pth",
                                              weights_only=True)["sampler"])
    second.fit()
    return {"straight": root / "straight", "split": root / "split",
            "batch_after_resume": batch_after_resume}  # type: ignore[dict-item]


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
    common = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", "-m", "training.train", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = [*common, "--arch", "MobileNetV1", "--train", str(pack), "--eval", str(pack),
                      "--steps", "2", "--eval-every", "2", "--batch-size", "2", "--workers",
                      "0", "--device", "cpu", "--crop-seconds", "0.35"]
    for cmd in (first, [*common, "--resume", "--steps", "3"]):
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [2, 3]  # one writer: no duplicate lines
    state = _load(out)
    assert state["iteration"] == 3 and len(state["rank_states"]) == 2
    assert state["sampler"]["global_batch"] == 2 * 2 * 2  # batch x mixup pairs x ranks
    assert state["config"]["steps"] == 3 and "labels" not in state
