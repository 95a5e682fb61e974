"""Fine-tuning pieces: pretrained loading without the head, a frozen base, held-out splits,
and evaluation of a label-folder data set through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from training.finetune import split_holdout
from training.models import create_model
from training.weights import freeze_base, is_head, load_pretrained, set_train_mode

SMALL = {"mel_bins": 32, "hop_size": 640, "window_size": 512}


@pytest.fixture(scope="module")
def official_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 527-class MobileNetV1 checkpoint in the official layout ({"model": state_dict})."""
    torch.manual_seed(0)
    model = create_model("MobileNetV1", **SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "MobileNetV1_small.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path


def test_head_keys() -> None:
    assert is_head("fc_audioset.weight") and is_head("att_block.cla.bias")
    assert not is_head("fc1.weight") and not is_head("bn0.running_mean")


def test_load_pretrained_skips_only_the_head(official_like: Path) -> None:
    source = torch.load(official_like, weights_only=True)["model"]
    model = create_model("MobileNetV1", classes_num=5, **SMALL)
    skipped = load_pretrained(model, official_like, skip_head=True)
    assert skipped == ["fc_audioset.bias", "fc_audioset.weight"]
    state = model.state_dict()
    for key, value in source.items():
        if not is_head(key):
            assert torch.equal(state[key], value), key
    assert state["fc_audioset.weight"].shape == (5, 1024)


def test_load_pretrained_refuses_a_mismatch(official_like: Path) -> None:
    with pytest.raises(ValueError, match="needs skip_head"):
        load_pretrained(
            create_model("MobileNetV1", classes_num=5, **SMALL), official_like, skip_head=False
        )
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained(create_model("MobileNetV2", classes_num=5), official_like, skip_head=True)
    with pytest.raises(
        ValueError,
        match=r"fc_audioset.weight: expected \(5, 1024\) vs got "
        r"\(527, 1024\)",
    ):
        load_pretrained(
            create_model("MobileNetV1", classes_num=5, **SMALL), official_like, skip_head=False
        )


def test_load_pretrained_takes_a_one_element_num_batches_tracked(
    official_like: Path, tmp_path: Path
) -> None:
    """Strict loading and export accept a (1,)-shaped num_batches_tracked (numpy-made
    checkpoints have them); fine-tuning must too."""
    state = torch.load(official_like, weights_only=True)["model"]
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert counters
    for key in counters:
        state[key] = torch.tensor([7])
    path = tmp_path / "old_style.pth"
    torch.save({"model": state}, path)
    model = create_model("MobileNetV1", classes_num=5, **SMALL)
    load_pretrained(model, path, skip_head=True)
    assert all(
        model.state_dict()[k].shape == () and int(model.state_dict()[k]) == 7 for k in counters
    )


def test_load_pretrained_error_shows_the_shapes(official_like: Path) -> None:
    model = create_model("MobileNetV1", classes_num=5, mel_bins=64)
    with pytest.raises(ValueError) as caught:
        load_pretrained(model, official_like, skip_head=True)
    message = str(caught.value)
    assert "bn0.weight: expected (64,) vs got (32,)" in message, message


def test_frozen_base_keeps_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("MobileNetV1", classes_num=3, **SMALL)
    with torch.no_grad():  # give the BatchNorms statistics of real input, as pretraining does
        for _ in range(5):
            model.train()(0.1 * torch.randn(4, 32000))
    trainable = freeze_base(model)
    assert trainable == ["fc_audioset.weight", "fc_audioset.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    set_train_mode(model, frozen_base=True)
    out = model(0.1 * torch.randn(4, 32000))["clipwise_output"]
    torch.nn.functional.binary_cross_entropy(out, torch.ones_like(out)).backward()
    optimizer.step()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc_audioset.bias", "fc_audioset.weight"]


class _Labelled:
    sample_rate = 32000

    def __init__(self, n: int) -> None:
        self.labels = ["a", "b"]
        self.targets = np.eye(2, dtype=np.float32)[np.arange(n) % 2]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(10, float(i), dtype=np.float32), self.targets[i]


def test_split_holdout_is_seeded_and_disjoint() -> None:
    data = _Labelled(20)
    train, held = split_holdout(data, 0.25, seed=3)
    assert held is not None and len(train) == 15 and len(held) == 5
    ids = {int(train[i][0][0]) for i in range(15)} | {int(held[i][0][0]) for i in range(5)}
    assert ids == set(range(20))
    assert list(split_holdout(data, 0.25, seed=3)[1].indices) == list(held.indices)
    assert train.labels == ["a", "b"] and train.targets.shape == (15, 2)
    assert split_holdout(data, 0.0, seed=3) == (data, None)
    with pytest.raises(ValueError, match="holdout"):
        split_holdout(data, 1.0, seed=3)


def test_evaluate_cli_on_a_label_folder(
    official_like: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tuned checkpoint (labels, model_args) scored on folders whose order differs:
    the summary printed and saved with the per-class table and figure."""
    from PIL import Image

    from training.evaluate import main

    torch.manual_seed(0)
    model = create_model("MobileNetV1", classes_num=2, **SMALL)
    ckpt = tmp_path / "run" / "checkpoints" / "best.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "MobileNetV1",
            "model_args": {"classes_num": 2, **SMALL},
            "labels": ["zeta", "alpha"],
        },
        ckpt,
    )
    rng = np.random.default_rng(0)
    for label in ("alpha", "zeta"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            sf.write(
                tmp_path / "data" / label / f"{i}.wav", 0.1 * rng.standard_normal(16000), 32000
            )
    table = tmp_path / "table.csv"
    assert (
        main(
            [
                "--checkpoint",
                str(ckpt),
                "--data",
                str(tmp_path / "data"),
                "--device",
                "cpu",
                "--workers",
                "0",
                "--csv",
                str(table),
                "--plot",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    saved = tmp_path / "run" / "eval-data"  # inside the run, named after the data
    summary = json.loads((saved / "summary.json").read_text())
    assert summary["clips"] == 6 and summary["classes_scored"] == 2 == summary["classes"]
    assert 0 <= summary["mAP"] <= 1
    for line in (
        f"mAP         {summary['mAP']:.4f}",
        f"mean AUC    {summary['mAUC']:.4f}",
        f"d-prime     {summary['d_prime']:.4f}",
        "6 clips, 2 of 2 classes scored",
    ):
        assert line in printed, printed
    rows = table.read_text().splitlines()
    assert rows[1].startswith("0,zeta,") and rows[2].startswith("1,alpha,")
    assert rows[1].endswith(",3") and rows[2].endswith(",3")
    assert (saved / "per_class.csv").read_text() == table.read_text()
    figure = saved / "per_class.png"
    assert str(figure) in printed
    with Image.open(figure) as image:
        image.load()
        assert image.format == "PNG" and image.width > 1000
