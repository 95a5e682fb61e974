"""Inference engines side by side: PyTorch eager vs ONNX Runtime fp32 / int8 (CPU) / fp16 (CUDA).

    python benchmarks/engine.py --arch Cnn14 --batch 8 [--seconds 10] [--rounds 5]

One run builds a temporary bundle from deterministic weights (``../shared/reference/fill.py``
when present, else a seeded initialisation; nothing is downloaded), then times the engines in
alternating rounds (round 1: every engine once, round 2: every engine once, ...) so that a
change in machine load hits all of them alike. Prints JSON (clips/s, ms per batch, threads,
provider, machine) and a comparison table. int8's top-10 agreement is measured on the real
recordings in ``../shared/audio`` when present (else on generated audio), which also calibrate
it. With fill.py's weights the sigmoid saturates on real recordings (many scores exactly 1.0),
so that agreement mostly measures tie-breaking; ``int8_top10_agreement_by_logits`` ranks the
same clips by the logits (the Sigmoid's input), which keeps the order quantization may change.
Pass ``--checkpoint`` with the official weights for the number that matters most.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn

    from training.models.common import PannsModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("PANNS_SHARED_DIR", REPO.parent / "shared"))

log = logging.getLogger("benchmarks.engine")
Runner = Callable[[], object]


def build_model(arch: str) -> tuple[PannsModel, str]:
    """The zoo model with deterministic weights, and how they were made."""
    import torch

    from training.models import create_model

    fill_py = SHARED / "reference" / "fill.py"
    manifest = SHARED / "reference" / "manifest.json"
    torch.manual_seed(0)
    model = create_model(arch)
    if fill_py.is_file() and manifest.is_file():
        spec = importlib.util.spec_from_file_location("panns_reference_fill", fill_py)
        assert spec is not None and spec.loader is not None
        fill = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fill)
        gain = json.loads(manifest.read_text())[arch]["gain"]
        model.load_state_dict(fill.fill_state_dict(model.state_dict(), gain))
        return model.eval(), "fill.py (../shared/reference)"
    return model.eval(), "torch.manual_seed(0) initialisation"


def machine(threads: int) -> dict[str, object]:
    import onnxruntime as ort
    import torch

    from benchmarks.common import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def engines(
    model: nn.Module, bundle: Path, batch: np.ndarray, threads: int, cuda: bool
) -> dict[str, tuple[str, Runner]]:
    """name -> (provider, a callable running one batch)."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(threads)
    tensor = torch.from_numpy(batch)

    def eager() -> object:
        with torch.inference_mode():
            return model(tensor)

    def ort_runner(path: Path, providers: list[str]) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=providers)
        return lambda: session.run(None, {"waveform": batch})

    cpu = ["CPUExecutionProvider"]
    out: dict[str, tuple[str, Runner]] = {
        "pytorch_eager": ("torch CPU", eager),
        "ort_fp32": ("CPUExecutionProvider", ort_runner(bundle / "model.onnx", cpu)),
        "ort_int8": ("CPUExecutionProvider", ort_runner(bundle / "model.int8.onnx", cpu)),
    }
    if cuda:
        gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        out["ort_fp32_cuda"] = ("CUDAExecutionProvider", ort_runner(bundle / "model.onnx", gpu))
        out["ort_fp16_cuda"] = (
            "CUDAExecutionProvider",
            ort_runner(bundle / "model.fp16.onnx", gpu),
        )
    return out


def _logit_session(path: Path, threads: int) -> tuple[ort.InferenceSession, str] | None:
    """A session that also returns the input of the Sigmoid producing ``clipwise_output``
    (the logits), or None when the clipwise output is not one Sigmoid (decision-level models)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path))
    node = next((n for n in graph.graph.node if "clipwise_output" in n.output), None)
    if node is None or node.op_type != "Sigmoid":
        return None
    logits = node.input[0]
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session, logits


def logit_agreement(bundle: Path, clips: np.ndarray, threads: int) -> float | None:
    """int8 vs fp32 top-10 agreement ranked by logits instead of probabilities. Where the
    sigmoid saturates to exactly 1.0 (fill.py's weights on real recordings), ranking by
    probability is a tie-break; the logits keep the order that quantization may change."""
    from model_export.verify import top10_agreement

    ranked: list[np.ndarray] = []
    for variant in ("model.onnx", "model.int8.onnx"):
        found = _logit_session(bundle / variant, threads)
        if found is None:
            return None
        session, logits = found
        ranked.append(session.run([logits], {"waveform": clips})[0])
    return top10_agreement(ranked[1], ranked[0])


def time_rounds(runners: dict[str, tuple[str, Runner]], rounds: int) -> dict[str, list[float]]:
    """Seconds per batch, ``rounds`` times per engine, engines alternating within a round."""
    from tqdm import tqdm

    for _, run in runners.values():  # warm-up (allocations, kernel selection)
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in tqdm(range(rounds), desc="rounds", unit="round", file=sys.stderr):
        for name, (_, run) in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(
    times: dict[str, list[float]], providers: dict[str, str], batch: int, threads: int
) -> dict[str, dict[str, object]]:
    base = statistics.median(times["pytorch_eager"])
    out: dict[str, dict[str, object]] = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        out[name] = {
            "provider": providers[name],
            "threads": threads,
            "ms_per_batch_median": round(median * 1000, 1),
            "ms_per_batch_min": round(min(seconds) * 1000, 1),
            "clips_per_s": round(batch / median, 3),
            "speedup_vs_pytorch": round(base / median, 2),
        }
    return out


def table(results: dict[str, dict[str, object]]) -> str:
    lines = [f"{'engine':16s} {'provider':22s} {'ms/batch':>10s} {'clips/s':>9s} {'vs torch':>9s}"]
    for name, row in results.items():
        lines.append(
            f"{name:16s} {row['provider']!s:22s} {row['ms_per_batch_median']!s:>10s} "
            f"{row['clips_per_s']!s:>9s} {row['speedup_vs_pytorch']!s:>8s}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="Cnn14")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="real weights (e.g. the official Cnn14 .pth) instead of fill.py's: "
        "int8 agreement is only meaningful with trained weights",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime as ort

    from model_export import export_bundle
    from model_export.audio import generated_batch, recordings

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if args.checkpoint:
        from training.checkpoints import load_checkpoint

        model, weights = load_checkpoint(args.checkpoint, arch=args.arch), args.checkpoint.name
    else:
        model, weights = build_model(args.arch)
    audio_dir = SHARED / "audio"
    calibration = audio_dir if audio_dir.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="panns-bench-") as tmp:
        bundle = Path(tmp) / args.arch.lower()
        card = export_bundle(
            model,
            bundle,
            arch=args.arch,
            fp16=cuda,
            int8=True,
            calibration_dir=calibration,
            progress=True,
        )
        sample_rate = card.sample_rate
        batch = generated_batch(sample_rate, args.batch, int(args.seconds * sample_rate), seed=5)
        runners = engines(model, bundle, batch, args.threads, cuda)
        logit_top10 = None
        if calibration is not None:
            clips, _ = recordings(calibration, sample_rate, int(args.seconds * sample_rate))
            logit_top10 = logit_agreement(bundle, clips, args.threads)
        times = time_rounds(runners, args.rounds)
    results = summarise(times, {k: v[0] for k, v in runners.items()}, args.batch, args.threads)
    int8 = card.parity["int8"]
    report = {
        "arch": args.arch,
        "batch": args.batch,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "weights": weights,
        "machine": machine(args.threads),
        "results": results,
        "int8_top10_agreement": int8.top10_agreement,
        "int8_max_abs_diff": int8.max_abs_diff,
        "int8_top10_agreement_by_logits": logit_top10,
        "int8_evaluated_on": int8.inputs,
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    print(table(results))
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
