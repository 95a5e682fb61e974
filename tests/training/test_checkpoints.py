"""The official checkpoint registry and loading checkpoint files into zoo models."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import reference_fill, reference_manifest, shared_path
from training.checkpoints import (
    OFFICIAL,
    CheckpointError,
    find_official,
    get_official,
    load_checkpoint,
    read_checkpoint,
)
from training.models import create_model, list_models

CNN6_FILE = "Cnn6_mAP=0.343.pth"


# --- registry -----------------------------------------------------------------------------------


def test_registry_matches_published_table() -> None:
    with shared_path("data", "panns_checkpoints.tsv").open() as fh:
        rows = {row["checkpoint"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert len(OFFICIAL) == 22 == len(rows)
    for entry in OFFICIAL.values():
        row = rows[entry.file_name]
        assert (entry.bytes, entry.sha256) == (int(row["bytes"]), row["sha256"])


def test_registry_matches_manifest() -> None:
    manifest = json.loads(shared_path("reference", "manifest.json").read_text())
    released = {k: v for k, v in manifest.items() if v["has_released_checkpoint"]}
    assert list(OFFICIAL) == list(released)
    for arch, spec in released.items():
        entry = OFFICIAL[arch]
        assert entry.arch == arch and arch in list_models()
        assert entry.file_name.lower() == spec["checkpoint_file_name"].lower()
        assert entry.mAP == spec["checkpoint_mAP"]


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("Cnn14", "Cnn14"),
        ("cnn14_16k", "Cnn14_16k"),
        ("CNN14_emb128_mAP=0.412.pth", "Cnn14_emb128"),
        ("/some/dir/Cnn14_mAP=0.431.pth", "Cnn14"),
        ("Cnn14_mAP=0.431 (1).pth", "Cnn14"),
        ("Cnn14_mAP=0.431-2.pth", "Cnn14"),
        ("Cnn14_8k.pth", "Cnn14_8k"),
        ("Wavegram_Logmel_Cnn14_mAP=0.439.pth", "Wavegram_Logmel_Cnn14"),
    ],
)
def test_find_official(name: str, arch: str) -> None:
    entry = find_official(name)
    assert entry is not None and entry.arch == arch


@pytest.mark.parametrize(
    "name",
    ["Cnn14_16.pth", "model.pth", "Cnn14_mAP=0.431.pth.bak", "Cnn14_mel32", "Cnn14_mAP=0.432.pth"],
)
def test_find_official_rejects(name: str) -> None:
    assert find_official(name) is None
    with pytest.raises(CheckpointError, match="Wavegram_Logmel_Cnn14"):
        get_official(name)


# --- loading ------------------------------------------------------------------------------------


def _model(arch: str = "Cnn6", seed: int = 0, **overrides: int) -> torch.nn.Module:
    """A model whose weights AND BatchNorm statistics are deterministic and non-trivial."""
    torch.manual_seed(seed)
    model = create_model(arch, **overrides)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


def _outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    waveform = 0.1 * torch.randn(2, 32000)
    with torch.no_grad():
        return dict(model(waveform))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_official_file_name_alone_loads_the_model(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / CNN6_FILE
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    loaded = load_checkpoint(path)
    assert type(loaded).__name__ == "Cnn6" and not loaded.training
    _assert_same(_outputs(model), _outputs(loaded))
    other = _outputs(_model(seed=1))  # the comparison can fail: other weights differ
    assert not torch.allclose(other["clipwise_output"], _outputs(loaded)["clipwise_output"])


@pytest.mark.parametrize("arch", ["Cnn6", "MobileNetV2", "LeeNet11", "DaiNet19"])
def test_fill_py_weights_under_the_official_name_load_alone(tmp_path: Path, arch: str) -> None:
    """The reference's filled state_dict (numpy-made: its 0-d BatchNorm counters come back
    with shape (1,), which torch itself accepts) saved in the official format loads with
    ``load_checkpoint(path)`` alone and reproduces the directly loaded model exactly."""
    fill = reference_fill()
    model = create_model(arch).eval()
    state = fill.fill_state_dict(model.state_dict(), reference_manifest()[arch]["gain"])
    model.load_state_dict(state, strict=True)
    path = tmp_path / OFFICIAL[arch].file_name
    torch.save({"model": state, "iteration": 0}, path)
    loaded = load_checkpoint(path)
    waveform = torch.from_numpy(fill.make_inputs(model.sample_rate)["b1_3s"])
    with torch.no_grad():
        expected, got = model(waveform), loaded(waveform)
    _assert_same(expected, got)


def test_bare_state_dict_under_a_copied_name(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "cnn6_mAP=0.343 (1).pth"
    torch.save(model.state_dict(), path)
    assert set(read_checkpoint(path)) == {"model"}
    _assert_same(_outputs(model), _outputs(load_checkpoint(path)))


def test_legacy_format_numpy_sampler_and_dataparallel_prefix(tmp_path: Path) -> None:
    """Like the official Cnn14_16k file: extra training state holding numpy arrays."""
    model = _model()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    sampler = {"indexes_per_class": [np.arange(5), np.arange(3)], "pointer": np.int64(2)}
    path = tmp_path / CNN6_FILE
    torch.save(
        {"model": state, "iteration": 10, "sampler": sampler},
        path,
        _use_new_zipfile_serialization=False,
    )
    assert read_checkpoint(path)["sampler"]["pointer"] == 2
    _assert_same(_outputs(model), _outputs(load_checkpoint(path)))


def test_model_args_arch_and_labels_round_trip(tmp_path: Path) -> None:
    model = _model(classes_num=10)
    labels = [f"class {i}" for i in range(10)]
    path = tmp_path / "finetuned.pth"
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "Cnn6",
            "model_args": {"classes_num": 10},
            "labels": labels,
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded.classes_num == 10
    assert read_checkpoint(path)["labels"] == labels
    outputs = _outputs(loaded)
    assert outputs["clipwise_output"].shape == (2, 10)
    _assert_same(_outputs(model), outputs)


def test_explicit_arch_wins(tmp_path: Path) -> None:
    model = _model("LeeNet11")
    path = tmp_path / CNN6_FILE  # misnamed on purpose
    torch.save({"model": model.state_dict(), "arch": "Cnn6"}, path)
    _assert_same(_outputs(model), _outputs(load_checkpoint(path, arch="LeeNet11")))


def test_wrong_architecture_lists_the_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "Cnn10_mAP=0.380.pth"
    torch.save({"model": _model().state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "do not fit Cnn10" in message and "missing keys: conv_block1.conv2.weight" in message
    assert "conv_block1.conv1.weight: expected (64, 1, 3, 3) vs got (64, 1, 5, 5)" in message


def test_long_conflict_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"model": _model().state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\+\d+ more\)") as info:
        load_checkpoint(path, arch="LeeNet11")
    assert len(str(info.value)) < 2000


def test_class_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / CNN6_FILE
    torch.save({"model": _model(classes_num=10).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"2 shape conflicts") as info:
        load_checkpoint(path)
    assert "fc_audioset.weight: expected (527, 512) vs got (10, 512)" in str(info.value)
    assert "missing" not in str(info.value)
    assert "hint: the weights have 10 classes" in str(info.value)


def test_unknown_architecture_lists_valid_names(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"model": _model().state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"cannot tell the architecture.*Cnn14_16k"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"unknown architecture 'Cnn7'.*ResNet38"):
        load_checkpoint(path, arch="Cnn7")


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.pth"
    torch.save({"model": _model("LeeNet11").state_dict()}, good)
    files = {
        "html": (b"\n<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "an HTML page"),
        "truncated": (good.read_bytes()[:5000], "truncated or corrupt zip"),
        "random": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint"),
        "empty": (b"", "is empty"),
        "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS"),
        "pickle": (pickle.dumps({"model": {"w": np.ones(2)}}), "cannot be read"),
    }
    out = {}
    for kind, (data, expected) in files.items():
        path = tmp_path / f"{kind}_{CNN6_FILE}"
        path.write_bytes(data)
        out[kind] = (path, expected)
    for kind, obj, expected in [
        ("code", {"model": _RunsCode()}, "disallowed global"),
        ("notensors", {"a": 1}, "a dict without tensors"),
        ("list", [1, 2], "holds a list"),
        ("modelnotsd", {"model": {"w": 1}}, "not a state_dict"),
    ]:
        path = tmp_path / f"{kind}_{CNN6_FILE}"
        torch.save(obj, path)
        out[kind] = (path, expected)
    return out


def test_files_that_are_not_checkpoints_get_one_line_errors(tmp_path: Path) -> None:
    for kind, (path, expected) in _bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message, (kind, message)
        assert message.startswith(str(path)) and expected in message, (kind, message)
        error = info.value  # no torch traceback chained to it
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / CNN6_FILE)
