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


def engine_stage(args: argparse.Namespace, report: Report, ort_device: str) -> dict[str, Any]:
    """The engine process alone (``benchmarks/engine_ceiling.py``): windows/s one engine takes
    from 4 stand-in fronts at the service's batch size, no HTTP or decoding; against the raw
    engine it shows whether the engine process or the fronts limit the service."""
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "engine.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "engine_ceiling.py")]
        cmd += ["--bundle", str(args.bundle), "--batch", str(args.service_max_batch)]
        cmd += ["--procs", "4", "--inflight", str(2 * args.service_max_batch // 4 + 4)]
        cmd += ["--duration-s", "5", "--warmup-s", "2", "--json", str(result_path)]
        cmd += ["--engine-env", f"PANNS_DEVICE={ort_device}", "--engine-env", "PANNS_WARMUP=ends"]
        log.info("%s", " ".join(cmd))
        note = run_bounded(cmd, max(20.0, min(ENGINE_STAGE_S, report.left_s() - 60)))
        if not result_path.is_file():
            raise RuntimeError(note or "benchmarks/engine_ceiling.py wrote no result")
        result: dict[str, Any] = json.loads(result_path.read_text())
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
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "frontend.json"
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "frontend.py"),
            "--bundle",
            str(args.bundle),
            "--workers",
            args.service_workers,
            "--formats",
            args.service_formats,
            "--no-stages",
            "--duration-s",
            str(args.service_duration_s),
            "--warmup-s",
            "4",
            "--procs",
            str(args.service_procs),
            "--connections",
            str(args.service_connections),
            "--ready-timeout-s",
            "240",
            "--server-env",
            f"PANNS_MAX_BATCH={args.service_max_batch}",
            "--server-env",
            "PANNS_WARMUP=ends",
            "--server-env",
            f"PANNS_DEVICE={ort_device}",
            "--json",
            str(result_path),
        ]
        timeout = max(30.0, report.left_s() - 10)
        log.info("%s (timeout %.0f s)", " ".join(cmd), timeout)
        note = run_bounded(cmd, timeout)
        if not result_path.is_file():
            raise RuntimeError(note or "benchmarks/frontend.py wrote no result")
        result = json.loads(result_path.read_text())
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
