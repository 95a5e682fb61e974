"""What ``frontend.py`` reports across its settings and rounds: the scaling ratios, the
machine's own ceiling, each round in brief, and which share of the server's CPU per clip the
in-process stage timings account for. Pure arithmetic over the measured dictionaries."""

from __future__ import annotations

import os
import statistics
from typing import Any


def _ratios(load: dict[str, dict[str, Any]], settings: list[str]) -> dict[str, Any]:
    """clips/s of every worker setting over the first one's, per format (one round)."""
    out: dict[str, Any] = {}
    for fmt in load[settings[0]]:
        base = load[settings[0]][fmt].get("clips_per_s")
        out[fmt] = {
            w: (
                round(load[w][fmt]["clips_per_s"] / base, 2)
                if base and load[w][fmt].get("clips_per_s")
                else None
            )
            for w in settings[1:]
        }
    return out


def scaling(rounds: list[dict[str, dict[str, Any]]], settings: list[str]) -> dict[str, Any]:
    """Per format and setting, the median over the rounds of clips/s over the baseline's."""
    each = [_ratios(load, settings) for load in rounds]
    out: dict[str, Any] = {"baseline_workers": settings[0]}
    for fmt in each[0]:
        out[fmt] = {}
        for w in settings[1:]:
            values = [r[fmt][w] for r in each if r[fmt][w] is not None]
            out[fmt][w] = round(statistics.median(values), 2) if values else None
    if len(rounds) > 1:
        out["per_round"] = {
            fmt: {w: [r[fmt][w] for r in each] for w in settings[1:]} for fmt in each[0]
        }
    return out


def brief(load: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One round's clips/s and server CPU ms per clip, per setting and format."""
    keys = (
        "clips_per_s",
        "server_cpu_ms_per_clip",
        "server_cpu_ms_per_clip_by_role",
        "server_loop_cpu_ms_per_clip_by_role",
    )
    return {
        w: {fmt: {k: m.get(k) for k in keys} for fmt, m in formats.items()}
        for w, formats in load.items()
    }


def most_processes(settings: list[str]) -> int:
    """The most server processes doing the work among the settings (fronts), at least 2."""
    numbers = [int(w) for w in settings if w.isdigit()]
    return max([2, *numbers]) if numbers else len(os.sched_getaffinity(0))


def ceiling(ceilings: list[float], settings: list[str]) -> dict[str, Any]:
    """The machine's own N-vs-1 ratio (``common.core_scaling``), measured before each round:
    what the service's ``scaling`` is to be read against."""
    return {
        "processes": most_processes(settings),
        "per_round": ceilings,
        "median": round(statistics.median(ceilings), 2),
    }


def attribute(stages: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """Server CPU per clip (load run) minus the stages timed in-process, per format."""
    response = stages["response_json"].get("pydantic_build_validate_dump") or 0.0
    engine = stages["engine"].get("engine_run_per_clip") or 0.0
    out = {}
    for fmt, measured in load.items():
        server = measured.get("server_cpu_ms_per_clip")
        if server is None or fmt not in stages:
            continue
        st = stages[fmt]
        timed = sum(
            st.get(k) or 0.0
            for k in (
                "body_read",
                "decode_total",
                "decode_pcm",
                "windows_cut",
                "batch_stack_per_clip",
            )
        )
        timed += response + engine
        out[fmt] = {
            "server_cpu_ms_per_clip": server,
            "stages_ms": round(timed, 2),
            "unattributed_ms": round(server - timed, 2),
        }
    return out


def machine_cores(busy: list[int]) -> float:
    """Cores busy over a window, from (busy, total) jiffies summed over every CPU."""
    return busy[0] / busy[1] * (os.cpu_count() or 1) if busy[1] else 0.0


def percentile_ms(values: list[float], q: int) -> float | None:
    """The ``q``-th percentile of ``values`` (seconds) in ms; None for no values."""
    if len(values) < 2:
        return round(values[0] * 1000, 1) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)
