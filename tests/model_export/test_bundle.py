"""The bundle on disk: card round-trip, determinism, atomic replacement, refusing damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_export import export_bundle
from model_export.atomic import replace_dir
from service.core.card import BundleError, ModelCard, load_bundle, read_card, write_card
from tests.model_export.conftest import seeded_model, write_recordings
from training.audioset import audioset_labels


def test_card_round_trip(leenet_bundle: Path, tmp_path: Path) -> None:
    card = load_bundle(leenet_bundle)
    assert card.arch == "LeeNet11" and card.name == "leenet11"
    assert card.sample_rate == 32000 and card.clip_samples == 320000
    assert card.min_samples == seeded_model("LeeNet11").min_samples
    assert card.frames_per_second is None
    assert [(i.name, i.shape, i.kind) for i in card.inputs] == [("waveform", [-1, -1], "waveform")]
    assert [(o.name, o.shape, o.kind) for o in card.outputs] == [
        ("clipwise_output", [-1, 527], "clipwise"),
        ("embedding", [-1, 512], "embedding"),
    ]
    table = audioset_labels()
    assert len(card.labels) == 527
    first = card.labels[0]
    assert (first.mid, first.display_name) == (table[0].mid, table[0].display_name)
    entry = card.files["fp32"]
    assert entry.bytes == (leenet_bundle / "model.onnx").stat().st_size
    assert set(card.versions) >= {"torch", "onnx", "onnxruntime"}
    assert card.parity["fp32"].tolerance == 1e-4 and len(card.parity["fp32"].inputs) == 3
    copy = tmp_path / "copy"
    copy.mkdir()
    write_card(copy, card)
    assert read_card(copy) == card
    assert (copy / "model.json").read_bytes() == (leenet_bundle / "model.json").read_bytes()
    assert ModelCard.model_validate_json((leenet_bundle / "model.json").read_text()) == card


def test_export_is_deterministic(tmp_path: Path) -> None:
    """Same weights, same options -> byte-identical files, the card included."""
    paths = []
    calibration = write_recordings(tmp_path / "recordings")
    for run in ("a", "b"):
        out = tmp_path / run / "cnn6"
        export_bundle(
            seeded_model("Cnn6"),
            out,
            arch="Cnn6",
            fp16=True,
            int8=True,
            calibration_dir=calibration,
        )
        paths.append(out)
    names = sorted(p.name for p in paths[0].iterdir())
    assert names == ["model.fp16.onnx", "model.int8.onnx", "model.json", "model.onnx"]
    assert names == sorted(p.name for p in paths[1].iterdir())
    for name in names:
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes(), name


def test_existing_bundle_is_replaced_whole(leenet_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(leenet_bundle, out)
    (out / "stale.txt").write_text("from the old bundle")
    card = export_bundle(
        seeded_model("LeeNet11", classes_num=3), out, arch="LeeNet11", labels=_labels(3)
    )
    assert load_bundle(out) == card and len(card.labels) == 3
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left


def _labels(n: int) -> list:
    from service.core.card import Label

    return [Label(index=i, mid=f"/x/{i}", display_name=f"sound {i}") for i in range(n)]


def test_replace_dir_swaps_atomically(tmp_path: Path) -> None:
    old, new = tmp_path / "bundle", tmp_path / ".bundle.tmp"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, old)
    assert (old / "a").read_text() == "new" and not new.exists()


def test_wrong_label_count_is_refused(tmp_path: Path) -> None:
    from model_export import ExportError

    with pytest.raises(ExportError, match="3 labels for a model with 527 classes"):
        export_bundle(seeded_model("LeeNet11"), tmp_path / "x", arch="LeeNet11", labels=_labels(3))
    with pytest.raises(ExportError, match="give its labels"):
        export_bundle(seeded_model("LeeNet11", classes_num=5), tmp_path / "x", arch="LeeNet11")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- damaged bundles
def _damaged(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "damaged"
    shutil.copytree(src, out)
    return out


def test_flipped_byte_is_refused(leenet_bundle: Path, tmp_path: Path) -> None:
    bundle = _damaged(leenet_bundle, tmp_path)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256 differs"):
        load_bundle(bundle)


def test_truncated_graph_is_refused(leenet_bundle: Path, tmp_path: Path) -> None:
    bundle = _damaged(leenet_bundle, tmp_path)
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) - 1000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle)


def test_missing_graph_is_refused(leenet_bundle: Path, tmp_path: Path) -> None:
    bundle = _damaged(leenet_bundle, tmp_path)
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle)


@pytest.mark.parametrize("damage", ["cut", "garbage", "no fp32", "gone"])
def test_broken_card_is_refused(leenet_bundle: Path, tmp_path: Path, damage: str) -> None:
    bundle = _damaged(leenet_bundle, tmp_path)
    card_path = bundle / "model.json"
    text = card_path.read_text()
    if damage == "cut":
        card_path.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        card_path.write_text("{not json")
    elif damage == "no fp32":
        card = json.loads(text)
        card["files"] = {}
        card_path.write_text(json.dumps(card))
    else:
        card_path.unlink()
    with pytest.raises(BundleError, match=r"model\.json|model bundle"):
        load_bundle(bundle)
