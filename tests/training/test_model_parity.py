"""Numerical parity with the published PANNs code, via the shared reference fixtures.

``../shared/reference/fill.py`` (loaded in place, never copied) fills every state_dict entry
deterministically; ``parity/<Model>.npz`` holds the reference outputs for those weights and
``fill.make_inputs``. Tolerances are FACTS.md's: probabilities (clipwise and framewise) atol
2e-5, embeddings atol/rtol 1e-4. The front-end buffers and the log-mel before bn0 are checked
against ``frontend_*.npz``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import SHARED_DIR, shared_path
from tests.conftest import reference_fill as fill_module
from tests.conftest import reference_manifest as manifest
from training.models import create_model, list_models

torch.set_num_threads(min(torch.get_num_threads(), 2))
PARITY_DIR = SHARED_DIR / "reference" / "parity"
TOLERANCES = {
    "clipwise_output": {"atol": 2e-5, "rtol": 0.0},
    "framewise_output": {"atol": 2e-5, "rtol": 0.0},
    "embedding": {"atol": 1e-4, "rtol": 1e-4},
}
# one architecture per front-end configuration in the manifest
FRONTEND_ARCHS = ("Cnn14", "Cnn14_16k", "Cnn14_8k", "Cnn14_mel32", "Cnn14_mel128")


def filled_model(name: str, **overrides: Any) -> nn.Module:
    """``name`` with fill.py's deterministic weights (manifest gain), loaded strictly."""
    model = create_model(name, **overrides)
    state = fill_module().fill_state_dict(model.state_dict(), manifest()[name]["gain"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def _fixture_names() -> list[Any]:
    """The architectures with a reference fixture (the others are checked by the same code in
    the shared reference tooling, not here)."""
    names = [name for name in list_models() if (PARITY_DIR / f"{name}.npz").exists()]
    if names:
        return names
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures in {PARITY_DIR}"))]


@pytest.fixture(scope="module", params=_fixture_names())
def parity_case(request: pytest.FixtureRequest) -> Iterator[tuple[nn.Module, Any]]:
    name = request.param
    reference = np.load(shared_path("reference", "parity", f"{name}.npz"))
    yield filled_model(name), reference


def _compare(model: nn.Module, reference: Any, input_name: str) -> None:
    inputs = fill_module().make_inputs(model.sample_rate)
    with torch.no_grad():
        outputs = model(torch.from_numpy(inputs[input_name]))
    expected = {key.split("__", 1)[1] for key in reference.files if key.startswith(input_name)}
    assert set(outputs) == expected
    for key, value in outputs.items():
        np.testing.assert_allclose(
            value.numpy(),
            reference[f"{input_name}__{key}"],
            err_msg=f"{input_name} {key}",
            **TOLERANCES[key],
        )


def test_parity_3s(parity_case: tuple[nn.Module, Any]) -> None:
    _compare(*parity_case, "b1_3s")


@pytest.mark.slow
def test_parity_10s(parity_case: tuple[nn.Module, Any]) -> None:
    _compare(*parity_case, "b2_10s")


def test_frontend_archs_cover_every_frontend_file() -> None:
    files = {entry["frontend_file"] for entry in manifest().values() if entry["frontend_file"]}
    assert files == {manifest()[name]["frontend_file"] for name in FRONTEND_ARCHS}


@pytest.mark.parametrize("name", FRONTEND_ARCHS)
def test_frontend_buffers_and_logmel(name: str) -> None:
    entry = manifest()[name]
    reference = np.load(shared_path("reference", entry["frontend_file"]))
    model = create_model(name).eval()
    state = model.state_dict()
    for key in entry["frontend_keys"]:
        np.testing.assert_allclose(
            state[key].numpy(), reference[key], atol=1e-6, rtol=0, err_msg=key
        )
    inputs = fill_module().make_inputs(model.sample_rate)
    with torch.no_grad():
        for input_name, waveform in inputs.items():
            logmel = model.raw_logmel(torch.from_numpy(waveform)).numpy()
            np.testing.assert_allclose(
                logmel, reference[f"logmel__{input_name}"], atol=1e-3, rtol=1e-5, err_msg=input_name
            )


@pytest.mark.parametrize("name", ["Cnn6", "Wavegram_Cnn14"])
def test_filled_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    """An official-format ``{"model": state_dict}`` file loads strictly into a fresh model and
    reproduces the outputs (Wavegram_Cnn14 also exercises its unused keys)."""
    model = filled_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    fresh = create_model(name)
    fresh.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    fresh.eval()
    waveform = torch.from_numpy(fill_module().make_inputs(model.sample_rate)["b1_3s"])
    with torch.no_grad():
        expected, got = model(waveform), fresh(waveform)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
