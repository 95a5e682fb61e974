"""The GPU engine's host side: a batch stacked and then staged, or its windows staged at once.

    python benchmarks/staging.py [--batches 8,32,64] [--repeats 20] [--json staging.json]

On CUDA the engine copies every batch into a page-locked staging buffer before the
host->device copy (``service.core.backends.ort_cuda.Staging``). Before, the batcher first
stacked the windows (``np.stack``: a fresh (B, L) array) and the engine thread copied that
into the buffer: two passes over every window, the first in the batcher's one stacking
thread. Now the batcher hands the windows unstacked (``stack=False``) and ``Staging.fill``
copies each into its row: one pass, in the engine threads. This times both on the real
``Staging`` class (pageable here: no CUDA runtime), with 10 s windows at 32 kHz cut from one
long waveform as a front cuts them, per window, for float32 (our bundles' input) and float16.
Prints JSON: ms per window for each way, batch size and dtype, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import emit, machine  # noqa: E402
from service.core.backends.ort_cuda import Staging  # noqa: E402

WINDOW = 320_000  # 10 s at 32 kHz


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # the buffer grows once, outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(batch: int, dtype: type[np.generic], repeats: int, window: int) -> dict[str, float]:
    wave = np.random.default_rng(batch).standard_normal(window * (batch + 1), dtype=np.float32)
    windows = [wave[i * window : (i + 1) * window] for i in range(batch)]
    staging = Staging()
    try:
        stacked_ms = _median_ms(lambda: staging.fill(np.stack(windows), dtype), repeats)
        direct_ms = _median_ms(lambda: staging.fill(windows, dtype), repeats)
    finally:
        staging.close()
    return {
        "stack_then_stage_ms_per_window": round(stacked_ms / batch, 4),
        "stage_windows_ms_per_window": round(direct_ms / batch, 4),
        "ratio": round(direct_ms / stacked_ms, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="8,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--window", type=int, default=WINDOW, help="samples per window")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["benchmarks/staging.py", *(argv or sys.argv[1:])]),
        "window_samples": args.window,
    }
    for name, dtype in (("float32", np.float32), ("float16", np.float16)):
        result[name] = {
            str(b): measure(int(b), dtype, args.repeats, args.window)
            for b in args.batches.split(",")
        }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
