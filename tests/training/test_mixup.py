"""Mixup: per-pair Beta lambdas, pairing of consecutive rows, resumable generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.mixup import Mixup, mix
from training.models import create_model


def test_lambdas_pair_up_and_sum_to_one() -> None:
    lam = Mixup(1.0, seed=0).lambdas(64)
    assert lam.shape == (64,) and lam.dtype == torch.float32
    assert torch.allclose(lam[0::2] + lam[1::2], torch.ones(32))
    assert bool(((lam >= 0) & (lam <= 1)).all())
    assert len(set(lam[0::2].tolist())) == 32  # one draw per pair


def test_lambdas_follow_beta_alpha_alpha() -> None:
    lam = Mixup(0.4, seed=1).lambdas(40000)[0::2].numpy()
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1389, U-shaped.
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - 1 / (4 * 1.8)) < 0.01
    assert np.mean((lam < 0.1) | (lam > 0.9)) > 0.3


def test_mix_matches_hand_computation() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]])
    lam = torch.tensor([0.25, 0.75, 0.5, 0.5])
    expected = torch.tensor([[0.25, 0.75], [3.0, 1.0]])
    assert torch.allclose(mix(x, lam), expected)
    with pytest.raises(ValueError, match="even batch"):
        mix(x[:3], lam[:3])


def test_state_dict_resumes_the_draws() -> None:
    a = Mixup(1.0, seed=[3, 0])
    a.lambdas(8)
    state = a.state_dict()
    expected = a.lambdas(8)
    b = Mixup(1.0, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.lambdas(8), expected)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="alpha"):
        Mixup(0.0)
    with pytest.raises(ValueError, match="even"):
        Mixup(1.0).lambdas(3)


def test_model_mixes_inside_forward_like_the_targets() -> None:
    """A zoo model given the lambdas returns one row per pair; mix() gives matching targets."""
    torch.manual_seed(0)
    model = create_model("Cnn14_mixup_time_domain", classes_num=4).train()
    wave = torch.randn(4, 32000) * 0.1
    lam = Mixup(1.0, seed=0).lambdas(4)
    out = model(wave, lam)["clipwise_output"]
    assert out.shape == (2, 4)
    targets = torch.eye(4)
    mixed = mix(targets, lam)
    assert torch.allclose(mixed.sum(dim=1), torch.ones(2))
    assert torch.allclose(mixed[0, :2], lam[:2])
