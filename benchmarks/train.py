"""Training throughput of a zoo model: clips per second, fp32 vs mixed precision on CUDA.

    python benchmarks/train.py [--arch Cnn14] [--batch-size 32] [--steps 20] [--warmup 5]
        [--seconds 10] [--device auto] [--no-mixup]

One step is the recipe's: Adam (AMSGrad) on the clip-level BCE, SpecAugment and dropout on,
and with mixup (default) the model reads ``2 * batch`` waveforms mixed into ``batch`` rows.
Inputs are random waveforms already on the device, so the number measures the model and
optimiser alone (no decoding or data loading). ``clips_per_s`` counts the ``batch`` mixed
training examples per second (``waveforms_per_s`` the inputs read). On CUDA the fp32 run is
followed by autocast runs in bfloat16 and float16 (float16 with a GradScaler); on CPU only
fp32 runs. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.mixup import Mixup, mix
from training.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, device: torch.device, amp: str | None) -> dict[str, Any]:
    """Time ``args.steps`` optimisation steps after ``args.warmup`` untimed ones."""
    torch.manual_seed(0)
    model = create_model(args.arch).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "float16")
    rows = args.batch_size * (2 if args.mixup else 1)
    wave = 0.1 * torch.randn(rows, int(args.seconds * model.sample_rate), device=device)
    target = (torch.rand(rows, model.classes_num, device=device) < 0.01).float()
    mixup = Mixup(1.0, seed=0) if args.mixup else None

    def step() -> None:
        lam = mixup.lambdas(rows).to(device) if mixup else None
        context = torch.autocast("cuda", dtype=getattr(torch, amp)) if amp else nullcontext()
        with context:
            out = model(wave, lam)["clipwise_output"]
        y = mix(target, lam) if lam is not None else target
        loss = F.binary_cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - started
    result = {
        "mode": f"amp-{amp}" if amp else "fp32",
        "step_ms": 1000 * elapsed / args.steps,
        "clips_per_s": args.batch_size * args.steps / elapsed,
        "waveforms_per_s": rows * args.steps / elapsed,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="Cnn14")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.seconds <= 0:
        parser.error("batch size, steps and seconds must be positive, warmup >= 0")
    return args


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modes: list[str | None] = [None]
    if device.type == "cuda":
        modes += ["bfloat16", "float16"]
    report = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "clip_seconds": args.seconds,
        "mixup": args.mixup,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": _device_name(device),
        "torch": torch.__version__,
        "results": [measure(args, device, amp) for amp in modes],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
