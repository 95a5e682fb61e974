"""Every zoo architecture: checkpoint layout, output shapes, length limits, training behaviour.

The expected layouts and shapes come from ``../shared/reference/manifest.json`` (skipped when
absent); everything else is checked against the models themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import reference_manifest
from training.models import create_model, list_models

# ~80M-parameter models: their 10 s runs are marked slow
SMALL_MODELS = {"Cnn6", "Cnn10", "MobileNetV1", "MobileNetV2", "LeeNet11", "LeeNet24", "DaiNet19"}
torch.set_num_threads(min(torch.get_num_threads(), 2))


def manifest_entry(name: str) -> dict[str, Any]:
    try:
        return reference_manifest()[name]
    except KeyError:
        pytest.fail(f"{name} is registered but missing from the manifest")


@pytest.fixture(scope="module", params=list_models())
def model(request: pytest.FixtureRequest) -> Iterator[nn.Module]:
    """One model per architecture, built once and shared by this module's tests (eval mode)."""
    torch.manual_seed(0)
    built = create_model(request.param).eval()
    built.arch_name = request.param  # type: ignore[assignment]
    yield built
    built.eval()


def _waveform(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, length, generator=generator)


def test_list_models_matchesreference_manifest() -> None:
    assert list_models() == list(reference_manifest())


def test_state_dict_matches_manifest(model: nn.Module) -> None:
    expected = [tuple(entry) for entry in manifest_entry(model.arch_name)["state_dict"]]
    got = [
        (key, list(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    ]
    assert got == expected


def test_metadata(model: nn.Module) -> None:
    entry = manifest_entry(model.arch_name)
    assert model.sample_rate == entry["sample_rate"]
    assert model.classes_num == 527
    assert tuple(model.output_names) == tuple(entry["output_names"])
    assert isinstance(model.min_samples, int) and model.min_samples > 0
    if entry["has_framewise_output"]:
        assert model.frames_per_second == pytest.approx(
            entry["ctor_args"]["sample_rate"] / entry["ctor_args"]["hop_size"]
        )


def _check_forward(model: nn.Module, input_name: str, batch: int, seconds: int) -> None:
    entry = manifest_entry(model.arch_name)
    waveform = _waveform(batch, seconds * model.sample_rate)
    with torch.no_grad():
        out = model(waveform)
    expected = {
        key.split("__", 1)[1]: shape
        for key, shape in entry["outputs"].items()
        if key.startswith(input_name + "__")
    }
    assert {key: list(value.shape) for key, value in out.items()} == expected
    assert all(value.dtype == torch.float32 for value in out.values())
    clipwise = out["clipwise_output"]
    assert torch.isfinite(clipwise).all() and (clipwise >= 0).all() and (clipwise <= 1).all()


def test_forward_3s(model: nn.Module) -> None:
    _check_forward(model, "b1_3s", batch=1, seconds=3)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(name, marks=() if name in SMALL_MODELS else pytest.mark.slow)
        for name in list_models()
    ],
    indirect=True,
)
def test_forward_10s(model: nn.Module) -> None:
    _check_forward(model, "b2_10s", batch=2, seconds=10)


def test_min_samples(model: nn.Module) -> None:
    shortest = model.min_samples
    with torch.no_grad():
        out = model(_waveform(1, shortest))
        assert out["clipwise_output"].shape == (1, 527)
        with pytest.raises(ValueError, match=f"at least {shortest} samples"):
            model(_waveform(1, shortest - 1))


def test_bad_input_rank_and_dtype(model: nn.Module) -> None:
    length = model.min_samples
    with pytest.raises(ValueError, match="batch, samples"):
        model(_waveform(1, length)[0])
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, length, dtype=torch.int16))


def test_training_mode_and_mixup(model: nn.Module) -> None:
    """Training at the minimum length runs (SpecAugment must cope with few frames); mixup
    halves the batch; eval ignores mixup_lambda and is deterministic."""
    length = max(2 * model.min_samples, model.sample_rate)
    waveform = _waveform(4, length, seed=1)
    lam = torch.tensor([1.0, 0.0, 1.0, 0.0])
    torch.manual_seed(0)
    model.train()
    try:
        with torch.no_grad():
            short = model(_waveform(2, model.min_samples, seed=2))
            mixed = model(waveform, mixup_lambda=lam)
    finally:
        model.eval()
    assert short["clipwise_output"].shape == (2, 527)
    assert mixed["clipwise_output"].shape == (2, 527)
    with torch.no_grad():
        plain = model(waveform, mixup_lambda=lam)
        again = model(waveform)
    assert plain["clipwise_output"].shape == (4, 527)
    torch.testing.assert_close(plain["clipwise_output"], again["clipwise_output"])
    # lam = [1, 0, 1, 0] keeps the even clips, so only training behaviour can differ
    assert not torch.allclose(mixed["clipwise_output"], plain["clipwise_output"][0::2])
    for key, value in mixed.items():
        assert value.shape[0] == 2 and torch.isfinite(value).all(), key


@pytest.mark.parametrize("name", list_models())
def test_create_model_with_ten_classes(name: str) -> None:
    torch.manual_seed(0)
    tuned = create_model(name, classes_num=10).eval()
    assert tuned.classes_num == 10
    with torch.no_grad():
        out = tuned(_waveform(2, tuned.min_samples + 123))
    assert out["clipwise_output"].shape == (2, 10)
    if "framewise_output" in out:
        frames = (tuned.min_samples + 123) // tuned.hop_size + 1
        assert out["framewise_output"].shape == (2, frames, 10)


@cache
def _small_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, classes_num=10).eval()


@pytest.mark.parametrize("extra", [0, 1, 319, 641, 6399])
def test_decision_level_frames_follow_logmel(extra: int) -> None:
    """framewise_output has exactly one row per log-mel frame (L // hop + 1) at any length."""
    sed = _small_model("Cnn14_DecisionLevelAvg")
    length = sed.min_samples + extra
    with torch.no_grad():
        out = sed(_waveform(1, length))
    assert out["framewise_output"].shape == (1, length // 320 + 1, 10)
    # clipwise of the Avg model is the mean of the segments, i.e. of the non-padded frames
    segments = out["framewise_output"][:, : (length // 320 + 1) // 32 * 32 : 32]
    torch.testing.assert_close(out["clipwise_output"], segments.mean(dim=1))


WAVEGRAM_LENGTHS = [10236, 10239, 10560, 10877, 10880, 11205, 48001, 64319]


def test_wavegram_lengths_include_branch_mismatch() -> None:
    """Sanity check of the lengths below: some of them give branches of different length."""

    def logmel_steps(length: int) -> int:
        return (length // 320 + 1) // 2

    def wavegram_steps(length: int) -> int:
        return ((length - 1) // 5 + 1) // 64 // 2

    mismatched = [n for n in WAVEGRAM_LENGTHS if logmel_steps(n) != wavegram_steps(n)]
    assert mismatched and len(mismatched) < len(WAVEGRAM_LENGTHS)


@pytest.mark.parametrize("name", ["Wavegram_Logmel_Cnn14", "Wavegram_Logmel128_Cnn14"])
@pytest.mark.parametrize("length", WAVEGRAM_LENGTHS)
def test_wavegram_logmel_odd_lengths(name: str, length: int) -> None:
    """The log-mel and wavegram branches can differ by one step; both are cropped."""
    wavegram = _small_model(name)
    with torch.no_grad():
        out = wavegram(_waveform(1, length))
    assert out["clipwise_output"].shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "override"),
    [
        ("Cnn14_16k", {"sample_rate": 32000}),
        ("Cnn14_8k", {"hop_size": 160}),
        ("Cnn14_mel32", {"mel_bins": 64}),
        ("Wavegram_Logmel_Cnn14", {"mel_bins": 128}),
    ],
)
def test_fixed_config_variants_refuse_other_configs(name: str, override: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"requires|needs"):
        create_model(name, **override)


def test_mixup_rejects_odd_batch() -> None:
    cnn = create_model("Cnn6", classes_num=2).train()
    with pytest.raises(ValueError, match="even batch"):
        cnn(_waveform(3, cnn.min_samples), mixup_lambda=torch.ones(3))
