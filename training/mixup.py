"""Mixup as the PANNs recipe does it.

With mixup on, every training batch holds ``2 * B`` clips. Consecutive rows form pairs
``(2i, 2i + 1)``; each pair draws ``lam ~ Beta(alpha, alpha)`` and the mixing coefficients are
``lam`` for the even row and ``1 - lam`` for the odd row. The model receives all ``2 * B``
waveforms plus that ``(2 * B,)`` coefficient vector and mixes inside its forward (on the log-mel
after the front end, or on the waveform for ``Cnn14_mixup_time_domain``), returning ``B`` rows;
the targets are mixed with the same coefficients by :func:`mix`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def mix(x: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """``x[0::2] * lambdas[0::2] + x[1::2] * lambdas[1::2]`` along the first axis."""
    if x.shape[0] != lambdas.shape[0] or x.shape[0] % 2:
        raise ValueError(
            f"mixup needs an even batch with one coefficient per row; "
            f"got {x.shape[0]} rows and {lambdas.shape[0]} coefficients"
        )
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam = lambdas.to(dtype=x.dtype, device=x.device).reshape(shape)
    return x[0::2] * lam[0::2] + x[1::2] * lam[1::2]


class Mixup:
    """Draws the per-pair mixing coefficients from its own seeded generator (resumable)."""

    def __init__(self, alpha: float, seed: int | Sequence[int] = 0) -> None:
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self._rng = np.random.default_rng(seed)

    def lambdas(self, rows: int) -> torch.Tensor:
        """Coefficients for a batch of ``rows`` clips (even): lam, 1 - lam, lam', 1 - lam', ..."""
        if rows <= 0 or rows % 2:
            raise ValueError(f"mixup needs a positive, even number of rows, got {rows}")
        lam = self._rng.beta(self.alpha, self.alpha, size=rows // 2)
        pairs = np.stack([lam, 1.0 - lam], axis=1).reshape(-1)
        return torch.from_numpy(pairs.astype(np.float32))

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = float(state["alpha"])
        self._rng.bit_generator.state = state["rng"]
