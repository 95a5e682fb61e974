"""The GPU check's report and helpers: the JSON written after every stage, the summary
printed last, and bounded runs of the benchmark scripts."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("gpu_check")


class Skip(Exception):
    """A stage that cannot run here; the message says why."""


class Report:
    """The JSON document, rewritten after every stage."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.deadline = time.monotonic() + budget_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        tmp.replace(self.path)

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], min_s: float = 0.0) -> None:
        """Run one stage; record its result, or why it was skipped or failed."""
        t0 = time.monotonic()
        if self.left_s() < min_s:
            result: dict[str, Any] = {
                "skipped": f"time budget: {self.left_s():.0f} s left, "
                f"the stage needs about {min_s:.0f} s"
            }
        else:
            log.info("== %s", name)
            try:
                result = fn()
            except Skip as exc:
                result = {"skipped": str(exc)}
            except Exception as exc:  # recorded, and the next stages still run
                result = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=6),
                }
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        for key in ("skipped", "error"):
            if key in result:
                log.warning("%s %s: %s", name, key, result[key])
        self.doc[name] = result
        self.save()


def nvidia_smi(query: str, timeout: float = 20.0) -> str:
    """``nvidia-smi --query-gpu=QUERY`` as CSV without header (its error, if it printed one);
    raises OSError or SubprocessError where it cannot run."""
    smi = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return smi.stdout.strip() or smi.stderr.strip()


def gpu_memory_used_mib() -> int | None:
    """The device's memory in use (all processes), by nvidia-smi; None where it cannot say."""
    try:
        return int(nvidia_smi("memory.used", timeout=10).split()[0])  # "6587 MiB"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class GpuMemoryPeak:
    """The most GPU memory in use while the block runs, sampled every ``every_s`` seconds
    (how much a service's engine holds: ONNX Runtime's arena grows and never shrinks)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.peak_mib: int | None = None
        self.before_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemoryPeak:
        self.before_mib = gpu_memory_used_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            used = gpu_memory_used_mib()
            if used is None:
                return
            self.peak_mib = max(self.peak_mib or 0, used)


def run_bounded(cmd: list[str], timeout: float) -> str | None:
    """Run ``cmd``; past ``timeout`` send SIGTERM (the benchmark then stops its server or
    engine), then SIGKILL. Returns what went wrong, if anything."""
    script = Path(cmd[1]).relative_to(REPO) if Path(cmd[1]).is_relative_to(REPO) else cmd[1]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return f"{script} stopped after {timeout:.0f} s (time budget)"
    return None if code == 0 else f"{script} exited with {code}"


def summary(doc: dict[str, Any]) -> None:
    """A short table last on stdout (a device run returns the end of the output)."""
    print("\n== gpu_check summary")
    env = doc.get("env", {})
    print(
        f"gpu: {env.get('gpu')}  cuda: {env.get('cuda')}  ort: {env.get('onnxruntime')} "
        f"{env.get('ort_providers')}"
    )
    for stage in ("export", "engines", "engine", "service", "variants"):
        if stage not in doc:
            continue
        st = doc[stage]
        state = st.get("skipped") or st.get("error") or "ok"
        print(f"{stage}: {state} ({st.get('elapsed_s')} s)")
    for lines in (_engines_lines, _variants_lines, _engine_lines, _service_lines):
        for line in lines(doc):
            print(f"  {line}")


def _engines_lines(doc: dict[str, Any]) -> Iterator[str]:
    """The raw engines (PyTorch, ORT fp32, fp16) per batch size, and their differences."""
    engines = doc.get("engines", {})
    for batch, row in engines.get("batches", {}).items():
        yield f"batch {batch:>3}: " + "  ".join(
            f"{k} {v['clips_per_s']:.0f}/s" for k, v in row.items()
        )
    if diffs := engines.get("max_abs_diff_vs_ort_fp32"):
        yield f"max abs diff vs ort fp32: {diffs}"
    if missing := engines.get("not_exported"):
        yield f"not timed: {missing} ({doc.get('export', {}).get('fp16_note')})"


def _variants_lines(doc: dict[str, Any]) -> Iterator[str]:
    """The engine variants per batch size, and the batch sizes in turn."""
    variants = doc.get("variants", {})
    for batch, row in variants.get("batches", {}).items():
        yield f"variants batch {batch:>3}: " + "  ".join(
            f"{k} {v['clips_per_s']:.0f}/s" if "clips_per_s" in v else f"{k} {_brief(v)}"
            for k, v in row.items()
            if isinstance(v, dict)
        )
    if mixed := variants.get("interleaved"):
        yield (
            f"variants, batch sizes in turn {mixed.get('sizes')}: service engine "
            f"{mixed.get('service_engine')}, one session {mixed.get('one_session')}, one "
            f"session with heuristic search {mixed.get('one_session_heuristic')}"
        )


def _engine_lines(doc: dict[str, Any]) -> Iterator[str]:
    """The service's engine alone, as served and each alternative, per max batch."""
    engine = doc.get("engine", {})
    for label, result in (("", engine), *engine.get("alternatives", {}).items()):
        for batch, row in result.get("by_max_batch", {}).items():
            yield (
                f"engine alone{' ' + label if label else ''}, max batch {batch}: "
                f"{row.get('windows_per_s')} windows/s, loop "
                f"{row.get('loop_cpu_ms_per_window')} / engine "
                f"{row.get('engine_cpu_ms_per_window')} CPU ms per window, mean batch "
                f"{row.get('mean_batch')}, ready in {row.get('engine_ready_s')} s, "
                f"GPU memory peak {result.get('gpu_memory_peak_mib')} MiB"
            )


def _service_lines(doc: dict[str, Any]) -> Iterator[str]:
    """The whole service per worker setting and format, and its ratio to the raw engine."""
    service = doc.get("service", {})
    for label, result in (("", service), *service.get("alternatives", {}).items()):
        for workers, formats in result.get("frontend", {}).get("load", {}).items():
            for fmt, res in formats.items():
                yield (
                    f"service{' ' + label if label else ''} workers={workers} {fmt}: "
                    f"{res.get('clips_per_s')} clips/s, "
                    f"{res.get('server_cpu_ms_per_clip')} CPU ms/clip, "
                    f"GPU memory peak {result['frontend'].get('gpu_memory_peak_mib')} MiB"
                )
    if ratio := service.get("vs_raw_fp16"):
        yield f"service / raw engine: {ratio}"


def _brief(row: dict[str, Any]) -> str:
    """A variant row that is no rate: why it was skipped, or what it compared."""
    if "skipped" in row:
        return "skipped"
    return ", ".join(f"{k}={v}" for k, v in row.items())
