"""The GPU check (issue 11 §5): engines side by side on CUDA, then the service at saturation.

    python scripts/device/gpu_check.py --out gpu_check.json [--arch Cnn14] [--budget-s 420]

Run by ``scripts/device/gpu_check.sh`` on the GPU host (which installs the carried wheels
first). Stages, each recorded in the JSON as soon as it ends (a run cut short still leaves
what it measured):

1. ``env``: Python, torch, CUDA, ONNX Runtime and its providers, the GPU, the CPU;
2. ``export``: ``--arch`` with deterministic weights (seed 0, BatchNorm statistics from one
   pass over generated audio) exported with ``model_export`` to fp32 + fp16;
3. ``engines``: PyTorch eager (fp32) vs ONNX Runtime CUDA fp32 vs fp16 through the service's
   engine class, at each ``--batches`` size: clips/s (numpy in, numpy out, so host<->device
   copies included), the first run's time (CUDA set-up, cuDNN algorithm search), and the
   fp16-vs-fp32 max abs difference of the scores;
4. ``engine``: the engine process alone (``benchmarks/engine_ceiling.py``: 4 stand-in fronts,
   no HTTP or decoding) at the service's batch size: windows/s, the engine's (and its event
   loop's) CPU per window, the time to ready and the GPU memory peak, over the raw fp16
   engine's clips/s; then the alternatives in ``load_stages.ENGINE_ALTERNATIVES`` (one
   unpadded session with cuDNN's quick heuristics, the padded sessions with them, one
   unpadded session as before);
5. ``service``: ``benchmarks/frontend.py`` on the exported bundle (32 kHz WAV and MP3 by
   default), and its clips/s over the raw fp16 engine's at the service's batch size; then
   WAV 32k once more for each of ``load_stages.SERVICE_ALTERNATIVES`` (one unpadded session,
   then with the quick heuristics);
6. ``variants``: the GPU engine's options side by side (``engine_variants.py``): plain CUDA
   fp16 vs pinned staging with 1 and 2 batches in flight vs channels-last (NHWC) vs TensorRT
   fp16 vs + CUDA graph (last: a failed capture broke the process's CUDA state on an H200),
   at each ``--variant-batches`` size; a batch one short of a bucket padded vs not; and batch
   sizes in turn through the service's engine (a session per padded size) vs one session vs
   one session with the quick heuristics. Last of all, in this process, with the time that
   is left: stages 4 and 5 run in subprocesses of their own and come first, so that whatever
   a variant does to this process's CUDA state cannot cost them.

Stages 3-6 need CUDA: without it they are recorded as skipped, with the reason, and the exit
status is 2, unless ``--allow-cpu`` (a dry run of the whole path on a CPU machine). Exit status 1:
the environment or the export failed. ``--budget-s`` bounds the run: stages that would start
too late are skipped, not cut.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # first: benchmarks/service.py must not shadow the package

from check_report import Report, Skip, gpu_memory_used_mib, nvidia_smi, summary  # noqa: E402
from load_stages import engine_stage, service_stage  # noqa: E402

log = logging.getLogger("gpu_check")
CUDA_EP = "CUDAExecutionProvider"
STAGES = ("env", "export", "engines", "engine", "service", "variants")


def env_stage(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda": cuda,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "install": os.environ.get("GPU_CHECK_INSTALL", "not run by gpu_check.sh"),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    try:
        out["nvidia_smi"] = nvidia_smi("name,driver_version,memory.total")
    except (OSError, subprocess.SubprocessError) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
    if not cuda:
        print(
            "gpu_check: CUDA is not available here (torch.cuda.is_available() is False): "
            "the engine and service stages need it"
            + (" (--allow-cpu: running them on the CPU)" if args.allow_cpu else ""),
            file=sys.stderr,
        )
    return out


def deterministic_model(arch: str) -> Any:
    """``arch`` with seed-0 weights and BatchNorm statistics from one training-mode pass over
    generated audio and noise (fresh statistics leave some models with constant outputs)."""
    import torch
    from torch import nn

    from model_export.audio import generated_batch
    from training.models import create_model

    torch.manual_seed(0)
    model: Any = create_model(arch)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the one pass
    rate = int(model.sample_rate)
    noise = 0.1 * np.random.default_rng(1).standard_normal((2, 2 * rate)).astype(np.float32)
    audio = np.concatenate([generated_batch(rate, 2, 2 * rate, seed=100), noise])
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(audio))
    return model.eval()


def export_stage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_export import ParityError, export_bundle

    model = deterministic_model(args.arch)
    out = work / args.arch.lower()
    try:
        card = export_bundle(model, out, arch=args.arch, fp16="fp16" in args.precisions)
        note = None
    except ParityError as exc:  # keep going with fp32: the engines stage still compares
        card = export_bundle(model, out, arch=args.arch, fp16=False)
        note = f"fp16 failed its parity gate: {exc}"
    args.bundle, args.model, args.exported = out, model, list(card.files)
    return {
        "bundle": str(out),
        "variants": list(card.files),
        "fp16_note": note,
        "parity": {k: v.model_dump() for k, v in card.parity.items()},
    }


def _time(run: Callable[[], object], batch: int, seconds: float) -> dict[str, float]:
    """The first call's time, then clips/s over at least ``seconds`` (3 calls at least)."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    run()  # the second call can still allocate; not timed
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < seconds:
        run()
        calls += 1
    elapsed = time.perf_counter() - t0
    return {
        "clips_per_s": round(batch * calls / elapsed, 1),
        "ms_per_batch": round(1000 * elapsed / calls, 2),
        "first_run_s": round(first, 2),
    }


def _devices(args: argparse.Namespace) -> tuple[str, Literal["cuda", "cpu"]]:
    """(torch device, ORT device) for the engines, or Skip."""
    import onnxruntime as ort
    import torch

    cuda, ort_cuda = torch.cuda.is_available(), CUDA_EP in ort.get_available_providers()
    if cuda and ort_cuda:
        return "cuda", "cuda"
    if args.allow_cpu:
        return ("cuda" if cuda else "cpu"), ("cuda" if ort_cuda else "cpu")
    why = [] if cuda else ["torch sees no CUDA device"]
    if not ort_cuda:
        why.append(
            f"ONNX Runtime {ort.__version__} offers only {ort.get_available_providers()}"
            f" ({os.environ.get('GPU_CHECK_INSTALL', 'onnxruntime-gpu not installed')})"
        )
    raise Skip("CUDA needed: " + "; ".join(why))


def _eager(model: Any, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def run(clips: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(clips).to(device)
            return np.asarray(model(x)["clipwise_output"].cpu().numpy())

    return run


def engines_stage(args: argparse.Namespace) -> dict[str, Any]:
    from engine_variants import clipwise  # beside this script

    from benchmarks.stages import load_engine
    from model_export.audio import generated_batch

    torch_device, ort_device = _devices(args)
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    model = args.model.to(torch_device)
    # a precision the export could not give (fp16 failing its parity gate) is not timed
    timed = [p for p in args.precisions if p in args.exported]
    engines = {"ort_" + p: load_engine(args.bundle, ort_device, p) for p in timed}
    rate, clip = engines["ort_fp32"].card.sample_rate, engines["ort_fp32"].card.clip_samples
    out: dict[str, Any] = {
        "torch_device": torch_device,
        "not_exported": [p for p in args.precisions if p not in timed],
        "providers": {k: e.provider for k, e in engines.items()},
        "clip_samples": clip,
        "measure_s": args.seconds,
        "batches": {},
    }
    if ort_device == "cuda" and any(e.provider != CUDA_EP for e in engines.values()):
        out["error"] = (
            f"the CUDA provider did not load (got {out['providers']}; see the log): "
            "ONNX Runtime not timed"
        )
        engines = {}
    pool = generated_batch(rate, 8, clip, seed=7)
    runners = {"torch_eager_fp32": _eager(model, torch_device)}
    runners.update({name: clipwise(engine) for name, engine in engines.items()})
    for batch in args.batches:
        clips = pool[np.arange(batch) % len(pool)]
        row = {name: _time(_bind(run, clips), batch, args.seconds) for name, run in runners.items()}
        out["batches"][str(batch)] = row
        log.info("batch %d: %s", batch, {k: v["clips_per_s"] for k, v in row.items()})
    if "ort_fp32" in runners:
        base = runners["ort_fp32"](pool)
        out["max_abs_diff_vs_ort_fp32"] = {
            k: float(np.max(np.abs(run(pool) - base)))
            for k, run in runners.items()
            if k != "ort_fp32"
        }
    runners.clear()
    engines.clear()  # their sessions' GPU arenas go with them, before the next stage loads more
    _free_gpu_memory(torch_device)
    out["gpu_memory_used_mib_after"] = gpu_memory_used_mib()
    return out


def _free_gpu_memory(torch_device: str) -> None:
    import gc

    import torch

    gc.collect()
    if torch_device == "cuda":
        torch.cuda.empty_cache()


def _bind(run: Callable[[np.ndarray], np.ndarray], clips: np.ndarray) -> Callable[[], object]:
    return lambda: run(clips)


def variants_stage(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    from engine_variants import variants_stage as measure  # beside this script

    _, ort_device = _devices(args)
    if ort_device != "cuda":
        raise Skip("the GPU engine's variants need ONNX Runtime's CUDA provider")
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    return measure(args.bundle, args.variant_batches, args.variant_seconds, report.left_s() - 10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON report")
    p.add_argument("--arch", default="Cnn14")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--precisions", default="fp32,fp16", help="ORT variants to time")
    p.add_argument("--seconds", type=float, default=2.0, help="timed per engine and batch")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting stages after")
    p.add_argument("--allow-cpu", action="store_true", help="run stages 3-6 without CUDA")
    p.add_argument("--stages", default=",".join(STAGES), help="which stages to run")
    p.add_argument("--variant-batches", default="32,64", help="batch sizes of stage 6")
    p.add_argument("--variant-seconds", type=float, default=1.5, help="timed per variant")
    p.add_argument(
        "--service-workers",
        default="default",
        help="PANNS_WORKERS settings for the service ('default': unset)",
    )
    p.add_argument("--service-formats", default="wav32k,mp3")
    p.add_argument("--service-duration-s", type=float, default=8.0)
    p.add_argument("--service-procs", type=int, default=4)
    p.add_argument("--service-connections", type=int, default=32)
    p.add_argument("--service-max-batch", type=int, default=64)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    args.variant_batches = [int(b) for b in args.variant_batches.split(",") if b.strip()]
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")
    args.stages = [x.strip() for x in args.stages.split(",") if x.strip()]
    if unknown := set(args.stages) - set(STAGES):
        p.error(f"unknown stage(s) {sorted(unknown)}: choose from {', '.join(STAGES)}")
    args.bundle = args.model = None
    args.exported = []
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    report = Report(args.out, args.budget_s)
    report.doc["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        stages: dict[str, tuple[Callable[[], dict[str, Any]], float]] = {
            "env": (lambda: env_stage(args), 0),
            "export": (lambda: export_stage(args, Path(work)), 30),
            "engines": (lambda: engines_stage(args), 30),
            # skipped rather than run short: it needs about 25 s, and the service stage 60
            "engine": (lambda: engine_stage(args, report, _devices(args)[1]), 25 + 60),
            "service": (lambda: service_stage(args, report, _devices(args)[1]), 60),
            "variants": (lambda: variants_stage(args, report), 40),
        }
        for name in STAGES:
            if name in args.stages:
                report.stage(name, *stages[name])
    report.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.save()
    summary(report.doc)
    if any("error" in report.doc.get(s, {}) for s in ("env", "export")):
        return 1
    return 0 if report.doc.get("env", {}).get("cuda") or args.allow_cpu else 2


if __name__ == "__main__":
    sys.exit(main())
