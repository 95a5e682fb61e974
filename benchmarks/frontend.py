"""Front-end benchmark: how many uploads per second the service ingests, and at what CPU cost.

    python benchmarks/frontend.py [--workers 1,2] [--duration-s 8] [--json out.json]

Runs the real service (``python -m service``, ``PANNS_WORKERS=N`` per setting) on a near-free
model (``benchmarks/nearfree.py``: the numbers are the service's own), loads it from client
processes (raw keep-alive sockets, requests built once: ``loadgen``) with 10 s clips as 32 kHz
mono WAV, 44.1 kHz stereo WAV, MP3, Ogg Vorbis and raw PCM (a server without that door answers
415: reported as unsupported). Arithmetic over the results: ``ratios``. Prints JSON:

* per worker setting and format: clips/s at saturation, latency, server CPU ms per clip (all
  processes of the server's tree, from /proc), client CPU ms per clip, machine busy %, and
  the cores other processes kept busy meanwhile (when that is not ~0, clips/s and the scaling
  ratio measure the neighbours; CPU per clip still holds);
* ``scaling``: clips/s of each worker setting over the first one's, per format; with
  ``--rounds N`` the settings run N times, alternating their order (1,2 then 2,1: the VM's
  drift over a round cancels), and the ratio is the median of the rounds' ratios
  (``scaling.per_round`` lists them; ``load`` holds the first round in full, ``rounds`` the
  clips/s and CPU per clip of every round);
* per setting and format also the latency's p50/p95/p99/max, and ``gc``: Python's garbage
  collections in the server's processes inside the window, by generation (how many, ms per
  clip; from ``panns_gc_pause_seconds``), none of which lets a request move;
* ``machine_scaling``: before each round, how much more pure-Python work 2 (or the most
  workers asked) processes do than one on this machine right now (``common.core_scaling``):
  the ceiling ``scaling`` is to be read against, as a VM's vCPUs may not be whole cores;
* ``stages`` (``--no-stages`` to skip): CPU ms per clip of each stage, timed in-process on the
  service's own functions (``benchmarks/stages.py``), and what the load run's server CPU per
  clip leaves unattributed to them (HTTP parsing, routing, the event loop, batching).

``--bundle`` serves another bundle instead (a GPU host runs the real Cnn14 this way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # first: benchmarks/service.py must not shadow the package

from benchmarks.common import (  # noqa: E402
    core_scaling,
    emit,
    free_port,
    machine,
    save_json,
    start_service,
    wait_ready,
)
from benchmarks.formats import FORMATS, Format, http_request, payloads  # noqa: E402
from benchmarks.loadgen import probe, run_load  # noqa: E402
from benchmarks.ratios import (  # noqa: E402
    attribute,
    brief,
    ceiling,
    most_processes,
    scaling,
)
from benchmarks.window import Window  # noqa: E402

log = logging.getLogger("benchmarks.frontend")


class Server:
    """``python -m service`` in its own process group, on a free port."""

    def __init__(
        self, bundle: Path, workers: str, extra_env: dict[str, str], connections: int
    ) -> None:
        self.port = free_port()
        settings = {
            "PANNS_MODELS": str(bundle),
            "PANNS_MAX_QUEUE": str(max(512, 8 * connections)),
            "PANNS_WORKERS": None if workers == "default" else workers,
            **extra_env,
        }
        self.proc = start_service(self.port, settings, own_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                log.warning("the service did not stop on SIGTERM; killing it")
        with contextlib.suppress(ProcessLookupError):  # whatever is left of our group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def measure(
    server: Server, fmt: Format, requests: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Saturate the server with one format; clips/s and CPU per clip in the window."""
    status, body = probe(server.port, requests[0])
    out: dict[str, Any] = {"description": fmt.description, "request_bytes": len(requests[0])}
    if status != 200:
        out.update(supported=False, status=status, message=body[:300].decode("utf-8", "replace"))
        return out
    model = json.loads(body).get("model", {})
    out["served_by"] = {k: model.get(k) for k in ("provider", "precision")}
    window = Window(server.port, server.proc.pid)
    load = run_load(
        server.port,
        requests,
        procs=args.procs,
        connections=args.connections,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
        at_window=window.mark,
    )
    out.update(supported=True, **window.figures(load))
    out["server_rss_idle_mb"] = round(window.idle_rss_mb())  # what the load leaves
    return out


def run_setting(
    workers: str, bundle: Path, requests: dict[str, list[bytes]], args: argparse.Namespace
) -> dict[str, Any]:
    """One server with ``PANNS_WORKERS=workers``, every format in turn."""
    extra = dict(kv.split("=", 1) for kv in args.server_env)
    server = Server(bundle, workers, extra, args.procs * args.connections)
    try:
        wait_ready(server.port, server.proc, args.ready_timeout_s)
        out: dict[str, Any] = {}
        for name, reqs in requests.items():
            log.info("workers=%s %s: %g s of load ...", workers, name, args.duration_s)
            out[name] = measure(server, FORMATS[name], reqs, args)
            log.info(
                "  %s",
                {k: out[name].get(k) for k in ("clips_per_s", "server_cpu_ms_per_clip", "status")},
            )
        return out
    finally:
        server.stop()


def build_requests(
    model_rate: int, args: argparse.Namespace
) -> tuple[dict[str, list[bytes]], dict[str, bytes]]:
    """Requests per format (built once), and one raw payload per format for the stages."""
    requests, raw = {}, {}
    query = dict(kv.split("=", 1) for kv in args.query)
    for name in args.formats:
        fmt = FORMATS[name]
        datas = payloads(fmt, model_rate, args.clip_s, args.clips)
        raw[name] = datas[0]
        requests[name] = [
            http_request(fmt, d, model_rate, path=args.path, query=query) for d in datas
        ]
    return requests, raw


def run_rounds(
    bundle: Path, requests: dict[str, list[bytes]], args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """Every worker setting, ``args.rounds`` times; odd rounds in the reverse order. After
    each setting the JSON is saved with what is done (a run cut short keeps it): ``load``
    (the first round), ``rounds`` (the round in progress too) and ``scaling`` (over the
    finished rounds)."""
    rounds: list[dict[str, dict[str, Any]]] = []
    ceilings: list[float] = []
    for index in range(args.rounds):
        order = args.workers if index % 2 == 0 else args.workers[::-1]
        load: dict[str, dict[str, Any]] = {}
        ceilings.append(core_scaling(most_processes(args.workers)))
        result["machine_scaling"] = ceiling(ceilings, args.workers)
        for workers in order:
            load[workers] = run_setting(workers, bundle, requests, args)
            if index == 0:
                result["load"] = {w: load[w] for w in args.workers if w in load}
            if args.rounds > 1:
                result["rounds"] = [brief(r) for r in rounds] + [brief(load)]
            save_json(args.json, result)
        rounds.append({w: load[w] for w in args.workers})
        if len(args.workers) > 1:
            result["scaling"] = scaling(rounds, args.workers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workers",
        default="1,2",
        help="PANNS_WORKERS settings, comma-separated ('default': leave it unset)",
    )
    p.add_argument("--formats", default=",".join(FORMATS), help=f"of {', '.join(FORMATS)}")
    p.add_argument("--bundle", type=Path, help="serve this bundle (default: a near-free one)")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured window per format")
    p.add_argument("--warmup-s", type=float, default=1.0, help="load before the window")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--connections", type=int, default=8, help="keep-alive sockets per process")
    p.add_argument("--clips", type=int, default=4, help="different clips per format")
    p.add_argument("--clip-s", type=float, default=10.0)
    p.add_argument(
        "--path",
        default="/v1/tag",
        choices=["/v1/tag", "/v1/embed", "/v1/detect"],
        help="the route every request posts to (/v1/detect: a decision-level bundle)",
    )
    p.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="K=V",
        help="extra query parameter on every request (repeatable)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for the service (repeatable)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the worker settings this many times, alternating their order (median ratio)",
    )
    p.add_argument("--ready-timeout-s", type=float, default=180.0)
    p.add_argument("--no-stages", action="store_true", help="skip the in-process stage timings")
    p.add_argument("--stage-repeats", type=int, default=15)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    args.workers = [w.strip() for w in args.workers.split(",") if w.strip()]
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in args.formats if f not in FORMATS]
    if unknown:
        p.error(f"unknown format(s) {unknown}: choose from {', '.join(FORMATS)}")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: the server (its own session) is stopped too


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    from service.core.card import read_card

    with tempfile.TemporaryDirectory(prefix="panns-frontend-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from benchmarks.nearfree import build_nearfree_bundle

            bundle = build_nearfree_bundle(Path(tmp) / "nearfree", clip_s=args.clip_s)
        card = read_card(bundle)
        requests, raw = build_requests(card.sample_rate, args)
        result: dict[str, Any] = {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "model": {
                "name": card.name,
                "arch": card.arch,
                "bundle": str(args.bundle or "near-free"),
            },
            "load_generator": {
                "procs": args.procs,
                "connections_per_proc": args.connections,
                "duration_s": args.duration_s,
                "warmup_s": args.warmup_s,
                "clip_s": args.clip_s,
                "path": args.path,
                "query": args.query,
            },
            "load": {},
        }
        run_rounds(bundle, requests, args, result)
        if not args.no_stages:
            from benchmarks.stages import all_stages

            log.info("per-stage CPU cost, in-process ...")
            chosen = {n: (FORMATS[n], raw[n]) for n in args.formats}
            max_batch = int(
                dict(kv.split("=", 1) for kv in args.server_env).get("PANNS_MAX_BATCH", 16)
            )
            stages = all_stages(
                chosen, bundle, card.sample_rate, card.clip_samples, max_batch, args.stage_repeats
            )
            stages["attribution"] = attribute(stages, result["load"][args.workers[0]])
            result["stages"] = stages
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
