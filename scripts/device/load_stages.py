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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from check_report import REPO, GpuMemoryPeak, Report, Skip, run_bounded

log = logging.getLogger("gpu_check")
ENGINE_RUN_S = 60  # one engine_ceiling run: loading, warm-up (every size: ~25 s), 7 s of load
SERVICE_STAGE_S = 100  # what the service stage needs (started, warmed, two formats measured)
SERVICE_ALTERNATIVE_S = 60  # one more service run: started, warmed, WAV 32k measured
HEURISTIC = "PANNS_ORT_CUDNN_SEARCH=heuristic"
UNPADDED = "PANNS_ORT_PAD_BATCHES=false"
# The service once more on one session for every batch size, unpadded (the engine before),
# then the same with cuDNN's quick heuristics (cheap re-planning would make one session do).
SERVICE_ALTERNATIVES = {
    "unpadded_one_session": (UNPADDED,),
    "unpadded_heuristic": (UNPADDED, HEURISTIC),
}
# The engine alone, as served (padded batches, default warm-up), then: one unpadded session
# with the quick heuristics, the padded sessions with them (their kernels' speed), and one
# unpadded session as before (1 and the full batch warmed; the H200 gave 259 windows/s, and
# 230 with every size warmed).
ENGINE_ALTERNATIVES = {
    "unpadded_heuristic": (UNPADDED, HEURISTIC, "PANNS_WARMUP=ends"),
    "padded_heuristic": (HEURISTIC,),
    "unpadded_ends_warmed": (UNPADDED, "PANNS_WARMUP=ends"),
}


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
        with GpuMemoryPeak() as memory:
            note = run_bounded(cmd, timeout)
        if not result_path.is_file():
            raise RuntimeError(note or f"benchmarks/{script} wrote no result")
        result = json.loads(result_path.read_text())
        result["gpu_memory_before_mib"] = memory.before_mib
        result["gpu_memory_peak_mib"] = memory.peak_mib
        return result, note


def engine_stage(args: argparse.Namespace, report: Report, ort_device: str) -> dict[str, Any]:
    """The engine process alone (``benchmarks/engine_ceiling.py``): windows/s one engine takes
    from 4 stand-in fronts at the service's batch size, no HTTP or decoding; against the raw
    engine it shows whether the engine process or the fronts limit the service. Then, while
    time allows, each of ``ENGINE_ALTERNATIVES``."""
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    result = _engine_run(args, report, ort_device)
    result["alternatives"] = _alternatives(
        report,
        ENGINE_ALTERNATIVES,
        ENGINE_RUN_S + SERVICE_STAGE_S,
        lambda env: _engine_run(args, report, ort_device, env),
        skipped="time budget (the service stage first)",
    )
    return result


def _alternatives(
    report: Report,
    table: dict[str, tuple[str, ...]],
    need_s: float,
    run: Callable[[tuple[str, ...]], dict[str, Any]],
    skipped: str = "time budget",
) -> dict[str, Any]:
    """``run(env)`` for each alternative in ``table`` while ``need_s`` seconds are left; a
    benchmark that wrote no result is recorded as an error, and the next one still runs."""
    out: dict[str, Any] = {}
    for name, env in table.items():
        if report.left_s() < need_s:
            out[name] = {"skipped": skipped}
            continue
        try:
            out[name] = run(env)
        except RuntimeError as exc:
            out[name] = {"error": str(exc)}
    return out


def _engine_run(
    args: argparse.Namespace, report: Report, ort_device: str, env: tuple[str, ...] = ()
) -> dict[str, Any]:
    options = ["--bundle", str(args.bundle), "--batch", str(args.service_max_batch)]
    options += ["--procs", "4", "--inflight", str(2 * args.service_max_batch // 4 + 4)]
    options += ["--duration-s", "5", "--warmup-s", "2"]
    engine_env = [f"PANNS_DEVICE={ort_device}", *env]
    for pair in engine_env:
        options += ["--engine-env", pair]
    timeout = max(20.0, min(ENGINE_RUN_S, report.left_s() - SERVICE_STAGE_S))
    result, note = _run_benchmark("engine_ceiling.py", options, timeout)
    row = result["by_max_batch"][str(args.service_max_batch)]
    raw = _raw_fp16(report.doc.get("engines", {}), args.service_max_batch)
    if raw and row.get("windows_per_s"):
        result["vs_raw_fp16"] = {
            **raw,
            "engine_alone": round(row["windows_per_s"] / raw["raw_clips_per_s"], 3),
        }
    result["engine_env"], result["note"] = engine_env, note
    return result


def service_stage(args: argparse.Namespace, report: Report, ort_device: str) -> dict[str, Any]:
    """``benchmarks/frontend.py`` on the exported bundle; its clips/s over the raw engine's.
    Then, while time allows, WAV 32k once more for each of ``SERVICE_ALTERNATIVES`` (one
    unpadded session, the engine before ``SessionsBySize``, then with the quick heuristics):
    the fix's effect end to end, in the same run."""
    if args.bundle is None:
        raise Skip("no bundle: the export stage did not run or failed")
    engines = report.doc.get("engines", {})
    spare = report.left_s() - 10 - SERVICE_ALTERNATIVE_S
    timeout = spare if spare >= SERVICE_STAGE_S else report.left_s() - 10
    options = _frontend_options(args, ort_device, args.service_workers, args.service_formats)
    result, note = _run_benchmark("frontend.py", options, max(30.0, timeout))
    out = {
        "frontend": result,
        "note": note,
        "vs_raw_fp16": _vs_raw(result, engines, args.service_max_batch),
    }

    def rerun(env: tuple[str, ...]) -> dict[str, Any]:
        # the first workers setting of the run above, so that the two compare like for like
        workers = args.service_workers.split(",")[0]
        options = _frontend_options(args, ort_device, workers, "wav32k", env)
        alt, alt_note = _run_benchmark("frontend.py", options, report.left_s() - 10)
        vs_raw = _vs_raw(alt, engines, args.service_max_batch)
        return {"frontend": alt, "note": alt_note, "server_env": list(env), "vs_raw_fp16": vs_raw}

    out["alternatives"] = _alternatives(report, SERVICE_ALTERNATIVES, SERVICE_ALTERNATIVE_S, rerun)
    return out


def _frontend_options(
    args: argparse.Namespace,
    ort_device: str,
    workers: str,
    formats: str,
    env: tuple[str, ...] = (),
) -> list[str]:
    options = ["--bundle", str(args.bundle), "--workers", workers]
    options += ["--formats", formats, "--no-stages"]
    options += ["--duration-s", str(args.service_duration_s), "--warmup-s", "4"]
    options += ["--procs", str(args.service_procs), "--connections", str(args.service_connections)]
    options += ["--ready-timeout-s", "240"]
    # warm-up as served: auto (every batch size)
    for pair in [f"PANNS_MAX_BATCH={args.service_max_batch}", f"PANNS_DEVICE={ort_device}", *env]:
        options += ["--server-env", pair]
    return options


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
