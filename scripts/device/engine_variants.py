"""The GPU engine's variants side by side (gpu_check.py's ``variants`` stage; README "GPU engine").

At each ``--variant-batches`` size (default 32 and 64), clips/s from a float32 numpy batch in to
float32 scores out (host<->device copies included) for:

- ``plain_fp16``: the fp16 session's own ``run`` (ORT copies pageable numpy in and out);
- ``pinned_inflight1``: ``OrtBackend`` (fp16 cast into a page-locked staging buffer, IO binding)
  called from one thread;
- ``pinned_inflight2``: the same called from two threads at once (two batches in flight);
- ``nhwc_inflight2``: + ``prefer_nhwc`` (convolutions channels-last);
- ``cuda_graph_inflight2``: + ``cuda_graph`` (a graph session per slot, captured for the batch);
- ``tensorrt_fp16_inflight2``: + ``tensorrt`` (fp16, engine cache; its profile spans 1 x
  the shortest input to the largest batch x 10 s here, so that the build fits the budget).

Then, at the largest size, batches of changing sizes in turn (``interleaved``) through the
service's engine, through one session, and through one unpadded session with cuDNN's quick
heuristics (``one_session_heuristic``, with its full-batch rate beside).

Each variant's max abs difference of the scores from ``plain_fp16`` is recorded too (the same
function must come out), with whether the staging was pinned and which options stayed on after
their fallbacks. Variants that would start too late for the stage's budget are skipped with a
note, TensorRT when ONNX Runtime does not offer it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gpu_check")
TRT_EP = "TensorrtExecutionProvider"
INTERLEAVED = [64, 48, 64, 33, 64, 17]  # batch sizes in turn, as a busy service cuts them
TRT_MIN_S = 150.0  # an engine build for Cnn14 can take minutes: start it only with this left


def throughput(
    run: Callable[[np.ndarray], np.ndarray], clips: np.ndarray, seconds: float, threads: int
) -> dict[str, float]:
    """clips/s with ``threads`` callers looping over ``run(clips)`` for ``seconds``."""
    run(clips)  # the first call at this shape (allocation, capture, engine build) is untimed
    t0 = time.perf_counter()
    run(clips)
    first = time.perf_counter() - t0
    calls = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        while time.perf_counter() < stop or calls[k] < 2:
            run(clips)
            calls[k] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    total = sum(calls)
    return {
        "clips_per_s": round(len(clips) * total / elapsed, 1),
        "ms_per_batch": round(1000 * elapsed * threads / total, 2),
        "second_run_s": round(first, 3),
        "threads": threads,
    }


def _backend(bundle: Path, batch: int, **extra: Any) -> Any:
    from service.core.backends import BackendOptions
    from service.core.backends.ort import OrtBackend

    opts = BackendOptions(device="cuda", precision="fp16", max_batch=batch, **extra)
    return OrtBackend(bundle, opts)


def _plain(engine: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The session's own run: numpy in (cast to fp16), numpy out."""
    name = next(n for n, kind in engine.kinds.items() if kind == "clipwise")

    def run(clips: np.ndarray) -> np.ndarray:
        feed = {engine.input_name: clips.astype(engine.input_dtype)}
        return np.asarray(engine.session.run([name], feed)[0], np.float32)

    return run


def clipwise(engine: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The service engine's ``run``, scores only: numpy in, clipwise scores out."""
    return lambda clips: np.asarray(engine.run(clips)["clipwise"])


def _measure(
    engine: Any,
    name: str,
    clips: np.ndarray,
    seconds: float,
    threads: int,
    reference: np.ndarray,
    load_s: float,
) -> dict[str, Any]:
    result = throughput(clipwise(engine), clips, seconds, threads)
    result.update(
        load_s=round(load_s, 1),
        pinned=engine.pinned,
        cuda_graph=engine.cuda_graph,
        tensorrt=engine.tensorrt,
        provider=engine.session.get_providers()[0],
        max_abs_diff_vs_plain=float(np.max(np.abs(clipwise(engine)(clips) - reference))),
    )
    log.info("batch %d %s: %s", len(clips), name, result)
    return result


def _loaded(bundle: Path, batch: int, **extra: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    engine = _backend(bundle, batch, **extra)
    return engine, time.monotonic() - t0


@dataclass
class _Plan:
    """What the variants after the first session share: the bundle, the batches, the time per
    variant and the deadline, the rows to fill, and the scores to compare with."""

    bundle: Path
    pools: dict[int, np.ndarray]
    seconds: float
    deadline: float
    rows: dict[str, dict[str, Any]]
    refs: dict[int, np.ndarray]


def _run_all(
    bundle: Path,
    pools: dict[int, np.ndarray],
    seconds: float,
    deadline: float,
    trt: bool,
    trt_cache: str,
    rows: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Fill ``rows`` (batch -> variant -> result): sessions shared where options allow; the
    batch sizes in turn (``interleaved``) returned."""
    largest = max(pools)
    base, load_s = _loaded(bundle, largest, inflight=2)
    refs = {b: _plain(base)(clips) for b, clips in pools.items()}
    for b, clips in pools.items():
        rows[str(b)]["plain_fp16"] = throughput(_plain(base), clips, seconds, 1)
        for name, threads in (("pinned_inflight1", 1), ("pinned_inflight2", 2)):
            rows[str(b)][name] = _measure(base, name, clips, seconds, threads, refs[b], load_s)
        rows[str(b)]["padded_parity"] = padded_parity(base, clips[: b - 1])
    mixed = {
        "sizes": INTERLEAVED,
        "service_engine": interleaved(clipwise(base), pools[largest], seconds),
        "one_session": interleaved(_plain(base), pools[largest], seconds),
    }
    del base
    plan = _Plan(bundle, pools, seconds, deadline, rows, refs)
    _heuristic(plan, mixed)
    _load_and_measure(plan, "nhwc_inflight2", 2 * seconds + 20.0, inflight=2, prefer_nhwc=True)
    _tensorrt(plan, trt, trt_cache)
    _cuda_graphs(plan)  # last: on an H200 (ORT 1.31.1) a failed capture broke the CUDA state
    return mixed


def _try_load(row: dict[str, Any], name: str, plan: _Plan, batch: int, **opts: Any) -> Any:
    """``(engine, load_s)``, or None with ``row[name]`` saying why it failed to load (an option
    this ORT refuses, a graph that fails to capture): the later variants still run."""
    try:
        return _loaded(plan.bundle, batch, **opts)
    except Exception as exc:
        row[name] = {"skipped": f"failed to load: {exc}"}
        return None


def _load_and_measure(plan: _Plan, name: str, need_s: float, **opts: Any) -> None:
    """One engine with ``opts`` at the largest batch, measured at every batch size (row
    ``name``), when ``need_s`` seconds are left."""
    largest = str(max(plan.pools))
    if not _time_left(plan.rows[largest], name, plan.deadline, need_s):
        return
    if (loaded := _try_load(plan.rows[largest], name, plan, max(plan.pools), **opts)) is None:
        return
    engine, load_s = loaded
    for b, clips in plan.pools.items():
        plan.rows[str(b)][name] = _measure(
            engine, name, clips, plan.seconds, 2, plan.refs[b], load_s
        )


def _heuristic(plan: _Plan, mixed: dict[str, Any]) -> None:
    """One unpadded session with cuDNN's quick heuristics (``cudnn_search="heuristic"``): the
    batch sizes in turn, and the full batch alone (are its kernels as fast as exhaustive's?);
    into ``mixed["one_session_heuristic"]``."""
    name, largest = "one_session_heuristic", max(plan.pools)
    if not _time_left(mixed, name, plan.deadline, 3 * plan.seconds + 20.0):
        return
    opts = {"pad_batches": False, "cudnn_search": "heuristic"}
    if (loaded := _try_load(mixed, name, plan, largest, **opts)) is None:
        return
    engine, load_s = loaded
    clips, run = plan.pools[largest], _plain(engine)
    out: dict[str, Any] = interleaved(run, clips, plan.seconds)
    cuda = engine.session.get_provider_options().get("CUDAExecutionProvider", {})
    out.update(
        load_s=round(load_s, 1),
        cudnn_conv_algo_search=cuda.get("cudnn_conv_algo_search"),
        full_batch=throughput(run, clips, plan.seconds, 1),
        max_abs_diff_vs_plain=float(np.max(np.abs(run(clips) - plan.refs[largest]))),
    )
    log.info("one session, heuristic search: %s", out)
    mixed[name] = out


def _tensorrt(plan: _Plan, offered: bool, cache: str) -> None:
    name = "tensorrt_fp16_inflight2"
    if not offered:
        for b in plan.pools:
            plan.rows[str(b)][name] = {"skipped": f"ONNX Runtime offers no {TRT_EP} on this host"}
        return
    opts = {"inflight": 2, "tensorrt": True, "trt_cache_dir": cache, "max_window_s": 10.0}
    _load_and_measure(plan, name, TRT_MIN_S, **opts)


def _cuda_graphs(plan: _Plan) -> None:
    """A graph is captured for one batch shape: one engine per batch size."""
    name = "cuda_graph_inflight2"
    for b, clips in plan.pools.items():
        row = plan.rows[str(b)]
        if not _time_left(row, name, plan.deadline, 30.0):
            continue
        if (loaded := _try_load(row, name, plan, b, inflight=2, cuda_graph=True)) is None:
            return  # a failed capture: the CUDA state is not to be trusted for another
        graph, load_s = loaded
        row[name] = _measure(graph, name, clips, plan.seconds, 2, plan.refs[b], load_s)
        del graph


def interleaved(
    run: Callable[[np.ndarray], np.ndarray], pool: np.ndarray, seconds: float
) -> dict[str, float]:
    """Windows/s when consecutive batches change size (``INTERLEAVED``, cut from ``pool``), as
    a busy service's batches do: one session re-plans its convolutions on every change."""
    sizes = [s for s in INTERLEAVED if s <= len(pool)] or [len(pool)]
    for size in sizes:  # each size once, untimed
        run(pool[:size])
    windows, calls, t0 = 0, 0, time.perf_counter()
    while calls < len(sizes) or time.perf_counter() - t0 < seconds:
        size = sizes[calls % len(sizes)]
        run(pool[:size])
        windows, calls = windows + size, calls + 1
    elapsed = time.perf_counter() - t0
    return {"windows_per_s": round(windows / elapsed, 1), "calls": calls}


def padded_parity(engine: Any, clips: np.ndarray) -> dict[str, Any]:
    """A batch one short of a bucket, run padded (the service engine) and as it is (the
    session's own run): the padding rows must not change the other rows' scores."""
    from service.core.backends.ort_cuda import padded_size

    padded = clipwise(engine)(clips)
    return {
        "rows": len(clips),
        "padded_to": padded_size(len(clips), engine.buckets),
        "max_abs_diff_vs_plain": float(np.max(np.abs(padded - _plain(engine)(clips)))),
    }


def _time_left(row: dict[str, Any], name: str, deadline: float, need: float) -> bool:
    left = deadline - time.monotonic()
    if left < need:
        row[name] = {"skipped": f"time budget: {left:.0f} s left, needs about {need:.0f} s"}
    return left >= need


def variants_stage(
    bundle: Path, batches: list[int], seconds: float, budget_s: float
) -> dict[str, Any]:
    """The variants at each batch size, within ``budget_s`` seconds."""
    import onnxruntime as ort
    from check_report import gpu_memory_used_mib  # beside this script

    from model_export.audio import generated_batch
    from service.core.card import read_card

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"ONNX Runtime offers only {ort.get_available_providers()}")
    deadline = time.monotonic() + budget_s
    card = read_card(bundle)
    if "fp16" not in card.files:
        raise RuntimeError("the bundle has no fp16 variant")
    trt = TRT_EP in ort.get_available_providers()
    pool = generated_batch(card.sample_rate, 8, card.clip_samples, seed=11)
    out: dict[str, Any] = {
        "measure_s": seconds,
        "tensorrt_offered": trt,
        "note": "clips/s from float32 numpy in to float32 scores out; inflight2 rows are "
        "driven by two threads at once",
    }
    pools = {b: pool[np.arange(b) % len(pool)] for b in batches}
    out["batches"] = {str(b): {} for b in batches}
    out["gpu_memory_used_mib_at_start"] = gpu_memory_used_mib()
    with tempfile.TemporaryDirectory(prefix="trt-cache-") as trt_cache:
        out["interleaved"] = _run_all(
            bundle, pools, seconds, deadline, trt, trt_cache, out["batches"]
        )
    return out
