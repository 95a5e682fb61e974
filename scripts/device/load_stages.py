"""The GPU check's last two stages: load on the exported bundle, against the raw engine.

``engine``: the engine process alone (``benchmarks/engine_ceiling.py``); ``service``: the
whole service at saturation (``benchmarks/frontend.py``). Both run the benchmark as a bounded
subprocess and compare its rate with the raw ORT fp16 engine's at the service's batch size.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from check_report import REPO, Report, Skip, run_bounded

log = logging.getLogger("gpu_check")
ENGINE_STAGE_S = 45  # the engine stage's share of the time left for the last two stages


def _run_benchmark(
    script: str, options: list[str], timeout: float
) -> tuple[dict[str, Any], str | None]:
    """``benchmarks/<script> <options> --json F`` bounded by ``timeout``; its JSON and what went
    wrong, if anything (a run cut short still counts when it wrote its JSON)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / script), *options]
        cmd += ["--json", str(result_path)]
        log.info("%s (timeout %.0f s)", " ".join(cmd), timeout)
        note = run_bounded(cmd, timeout)
        if not result_path.is_file():
            raise RuntimeError(note or f"benchmarks/{script} wrote no result")
        return json.loads(result_path.read_text()), note


def engine_stage(args: argparse.Namespace, report: Report, ort_device: str) -> dict[str, Any]:
    """The engine process alone (``benchmarks/engine_ceiling.py``): windows/s one engine takes
    from 4 stand-in fronts at the service's batch size, no HTTP or decoding; against the raw
    engine it shows whether the engine process or the fronts limit the service."""
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    options = ["--bundle", str(args.bundle), "--batch", str(args.service_max_batch)]
    options += ["--procs", "4", "--inflight", str(2 * args.service_max_batch // 4 + 4)]
    options += ["--duration-s", "5", "--warmup-s", "2"]
    options += ["--engine-env", f"PANNS_DEVICE={ort_device}", "--engine-env", "PANNS_WARMUP=ends"]
    timeout = max(20.0, min(ENGINE_STAGE_S, report.left_s() - 60))
    result, note = _run_benchmark("engine_ceiling.py", options, timeout)
    row = result["by_max_batch"][str(args.service_max_batch)]
    raw = _raw_fp16(report.doc.get("engines", {}), args.service_max_batch)
    if raw and row.get("windows_per_s"):
        result["vs_raw_fp16"] = {
            **raw,
            "engine_alone": round(row["windows_per_s"] / raw["raw_clips_per_s"], 3),
        }
    result["note"] = note
    return result


def service_stage(args: argparse.Namespace, report: Report, ort_device: str) -> dict[str, Any]:
    """``benchmarks/frontend.py`` on the exported bundle; its clips/s over the raw engine's."""
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    options = ["--bundle", str(args.bundle), "--workers", args.service_workers]
    options += ["--formats", args.service_formats, "--no-stages"]
    options += ["--duration-s", str(args.service_duration_s), "--warmup-s", "4"]
    options += ["--procs", str(args.service_procs), "--connections", str(args.service_connections)]
    options += [
        "--ready-timeout-s",
        "240",
        "--server-env",
        f"PANNS_MAX_BATCH={args.service_max_batch}",
    ]
    options += ["--server-env", "PANNS_WARMUP=ends", "--server-env", f"PANNS_DEVICE={ort_device}"]
    result, note = _run_benchmark("frontend.py", options, max(30.0, report.left_s() - 10))
    engines = report.doc.get("engines", {})
    return {
        "frontend": result,
        "note": note,
        "vs_raw_fp16": _vs_raw(result, engines, args.service_max_batch),
    }


def _raw_fp16(engines: dict[str, Any], max_batch: int) -> dict[str, Any] | None:
    """The raw ORT fp16 engine's clips/s at the largest measured batch up to ``max_batch``."""
    measured = [int(b) for b in engines.get("batches", {}) if int(b) <= max_batch]
    if not measured:
        return None
    batch = max(measured)
    row = engines["batches"][str(batch)]
    raw = (row.get("ort_fp16") or row.get("ort_fp32") or {}).get("clips_per_s")
    return {"raw_batch": batch, "raw_clips_per_s": raw} if raw else None


def _vs_raw(frontend: dict[str, Any], engines: dict[str, Any], max_batch: int) -> Any:
    """Service clips/s per format over the raw ORT fp16 engine at the service's batch size."""
    raw = _raw_fp16(engines, max_batch)
    if raw is None:
        return None
    out: dict[str, Any] = dict(raw)
    for workers, formats in frontend.get("load", {}).items():
        for fmt, res in formats.items():
            if res.get("clips_per_s"):
                out[f"workers={workers} {fmt}"] = round(
                    res["clips_per_s"] / raw["raw_clips_per_s"], 3
                )
    return out
