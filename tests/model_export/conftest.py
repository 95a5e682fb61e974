"""Deterministic zoo models and small bundles for the model_export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from tests.conftest import reference_fill, reference_manifest
from training.models import create_model


def _gain(arch: str) -> float:
    return float(reference_manifest()[arch]["gain"])


def reference_model(arch: str) -> nn.Module:
    """``arch`` with the reference fixtures' deterministic weights (fill.py), in eval mode."""
    model = create_model(arch)
    model.load_state_dict(reference_fill().fill_state_dict(model.state_dict(), _gain(arch)))
    return model.eval()


def seeded_model(arch: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """``arch`` with seeded weights and non-trivial BatchNorm statistics (no shared files)."""
    torch.manual_seed(seed)
    model = create_model(arch, **overrides)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(1 + 0.5 * torch.rand(module.num_features, generator=generator))
    return model.eval()


def write_recordings(directory: Path) -> Path:
    """Three short WAV files at different rates (and one file that is not audio)."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i, rate in enumerate([32000, 44100, 16000]):
        wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * np.arange(rate * 2) / rate)
        wave += 0.01 * rng.standard_normal(wave.size)
        soundfile.write(directory / f"clip{i}.wav", wave, rate)
    (directory / "notes.txt").write_text("not audio")
    return directory


@pytest.fixture(scope="session")
def leenet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fp32 bundle (LeeNet11), exported once per session; copy it before changing it."""
    from model_export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "leenet11"
    export_bundle(seeded_model("LeeNet11"), out, arch="LeeNet11")
    return out
