"""Service benchmark: raw engine throughput, the HTTP service under K clients, the raw again.

    python benchmarks/service.py --bundle models/cnn14 --batch 8 --clients 16 --seconds 60

All phases use the same bundle, device, precision and threads. The raw engine runs before and
after the service (the ratio is over their mean, so a machine whose speed drifts shows as two
raw figures). The clients are separate processes on raw keep-alive sockets with their requests
built once (``benchmarks/loadgen``): on a small machine the load generator takes little CPU
from the service. The clips are real recordings (``../shared/audio`` by default), each cut or
zero-padded to the model's 10 s window and sent as 16-bit WAV at the model's rate. Prints a
Markdown table for BENCHMARKS.md (``--json PATH`` also writes the numbers). Not a test: run
it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import save_json, start_service, tree_usage, wait_ready  # noqa: E402
from benchmarks.formats import FORMATS, audio_file, http_request  # noqa: E402
from benchmarks.loadgen import LoadResult, read_response, run_load  # noqa: E402
from service.core.audio import decode  # noqa: E402
from service.core.backends import BackendOptions  # noqa: E402
from service.core.backends.ort import OrtBackend  # noqa: E402

log = logging.getLogger("benchmarks.service")


def load_clips(audio_dir: Path, rate: int, samples: int) -> list[np.ndarray]:
    """Every recording in ``audio_dir`` at ``rate``, cut or zero-padded to ``samples``."""
    clips = []
    for path in sorted(audio_dir.iterdir()):
        if path.suffix.lower() not in (".wav", ".flac", ".ogg", ".mp3"):
            continue
        wave = decode(path.read_bytes(), rate, 3600).waveform[:samples]
        clips.append(np.pad(wave, (0, samples - wave.shape[0])))
    if not clips:
        raise SystemExit(f"no recordings in {audio_dir}")
    return clips


def raw_throughput(
    engine: OrtBackend, clips: list[np.ndarray], batch: int, seconds: float
) -> float:
    """Clips per second of ``engine.run`` on full batches, after one warm-up batch."""
    stacked = np.stack([clips[i % len(clips)] for i in range(batch)])
    engine.run(stacked)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.run(stacked)
        done += batch
    return done / (time.perf_counter() - start)


def service_settings(args: argparse.Namespace) -> dict[str, str]:
    """The PANNS_* settings of the service under test, from the command line."""
    return {
        "PANNS_MODELS": str(args.bundle),
        "PANNS_MAX_BATCH": str(args.batch),
        "PANNS_MAX_DELAY_MS": str(args.max_delay_ms),
        "PANNS_THREADS": str(args.threads),
        "PANNS_DEVICE": args.device,
        "PANNS_PRECISION": args.precision,
        "PANNS_MAX_QUEUE": str(max(512, 4 * args.clients)),
        "PANNS_WORKERS": str(args.workers),
    }


async def load(
    url: str, bodies: list[bytes], clients: int, seconds: float
) -> tuple[list[float], dict[int, int], float]:
    """K clients posting one clip per request in a loop for ``seconds``, through httpx in this
    process (``two_tier.py``'s load, through its front; ``saturate`` costs less CPU)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        n = index
        while time.perf_counter() < stop_at:
            body = bodies[n % len(bodies)]
            n += clients
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/tag", files=[("file", ("clip.wav", body))])
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return latencies, statuses, time.perf_counter() - start


def saturate(args: argparse.Namespace, requests: list[bytes]) -> LoadResult:
    """``args.clients`` keep-alive connections posting clips for ``args.seconds`` (after
    ``args.warmup_s``), from client processes on raw sockets with the requests built once:
    an HTTP library in this process would take CPU from the service on a small machine. The
    latencies are of every answer, whatever its status (the statuses show any not 200)."""
    procs = 2 if args.clients % 2 == 0 else 1
    result = run_load(
        args.port,
        requests,
        procs=procs,
        connections=args.clients // procs,
        warmup_s=args.warmup_s,
        duration_s=args.seconds,
    )
    if result.errors:
        log.warning("%d transport errors, the first: %s", result.errors, result.first_error)
    return result


class PeakTreeRss:
    """The largest resident MB of the service's process tree seen while a ``with`` block runs.

    The tree is ``root`` and its descendants (with PANNS_WORKERS > 1: the supervisor, the
    fronts and the engine), their RSS summed and sampled every ``period_s`` by a thread here.
    One process's VmHWM is exact but a sum of several would add peaks reached at different
    times; a sampled sum is the tree's footprint at one moment, but can miss a spike shorter
    than the period. Pages the processes share (libraries, the shared-memory windows) count
    once per process. The object may be entered again: the peak carries over.
    """

    def __init__(self, root: int, period_s: float = 0.2) -> None:
        self.root, self.period_s, self.mb = root, period_s, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakTreeRss:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while True:
            self.mb = max(self.mb, tree_usage(self.root).rss_mb)
            if self._stop.wait(self.period_s):
                return


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "cnn14")
    p.add_argument("--audio-dir", type=Path, default=REPO.parent / "shared" / "audio")
    p.add_argument("--batch", type=int, default=8, help="PANNS_MAX_BATCH and raw batch size")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60, help="service load duration")
    p.add_argument("--warmup-s", type=float, default=3, help="service load before the timing")
    p.add_argument("--raw-seconds", type=float, default=20)
    p.add_argument("--max-delay-ms", type=float, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--port", type=int, default=8790)
    p.add_argument("--workers", type=int, default=1, help="PANNS_WORKERS of the service")
    p.add_argument("--lone", type=int, default=20, help="sequential lone requests timed")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def run_service(
    args: argparse.Namespace, bodies: list[bytes], reference: Reference, rate: int
) -> tuple[LoadResult, float, list[tuple[float, float, float]], float]:
    """Start ``python -m service``, load it with K clients, stop it; return the numbers (the
    last: the service's CPU ms per lone request, every process of it, from ``/proc``).
    The requests (each clip's body as a 32 kHz WAV upload) are built once, for both loads.

    The tree's peak RSS is sampled while the service starts and while it is under load, not
    during the lone requests: their sub-millisecond overheads are measured in this process,
    which the sampling thread would disturb."""
    requests = [http_request(FORMATS["wav32k"], body, rate) for body in bodies]
    proc = start_service(args.port, service_settings(args))
    peak = PeakTreeRss(proc.pid)
    try:
        with peak:
            wait_ready(args.port, proc)
        cpu_before = tree_usage(proc.pid).cpu_s
        lone = lone_latencies(args.port, requests, args.lone, reference)
        lone_cpu_ms = 1000 * (tree_usage(proc.pid).cpu_s - cpu_before) / (args.lone + 1)
        reference.close()  # the raw engine's last user: its session goes before the load
        log.info("service: %d clients for %g s ...", args.clients, args.seconds)
        with peak:
            loaded = saturate(args, requests)
    finally:
        proc.terminate()
        proc.wait(60)
    return loaded, peak.mb, lone, lone_cpu_ms


def lone_latencies(
    port: int, requests: list[bytes], count: int, reference: Reference
) -> list[tuple[float, float, float]]:
    """One client, one request at a time (after one warm-up): what an idle service adds.

    The requests (built once, clip n's the n-th) go on one raw keep-alive socket (an HTTP
    library would add its own milliseconds to every figure). Each is paired with the engine's
    batch-1 run and the decode of the same clip, timed in this process right after it (the
    service idle meanwhile), so that a shared machine's drifting speed cancels out of the
    difference: (request, engine, decode) in seconds."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in range(count + 1):
            t0 = time.perf_counter()
            sock.sendall(requests[n % len(requests)])
            status, _, _ = read_response(sock)
            took = time.perf_counter() - t0
            engine_s, decode_s = reference(n)
            if status == 200 and n:
                out.append((took, engine_s, decode_s))
    return out


class Reference:
    """Seconds of the engine on clip n (batch 1) and of decoding its 10 s WAV; ``close``
    lets the engine go (its session and threads) before the service is loaded."""

    def __init__(
        self, engine: OrtBackend, clips: list[np.ndarray], bodies: list[bytes], rate: int
    ) -> None:
        self.engine: OrtBackend | None = engine
        self.clips, self.bodies, self.rate = clips, bodies, rate
        self(0)  # warm

    def __call__(self, n: int) -> tuple[float, float]:
        assert self.engine is not None, "the reference engine was closed"
        one = self.clips[n % len(self.clips)][None, :]
        t0 = time.perf_counter()
        self.engine.run(one)
        t1 = time.perf_counter()
        decode(self.bodies[n % len(self.bodies)], self.rate, 60)
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        self.engine = None


def lone_summary(lone: list[tuple[float, float, float]]) -> dict[str, float]:
    """Medians (ms) of the lone requests, their paired engine and decode times, and of
    what each request took beyond its pair (the service's own overhead)."""
    if not lone:
        return {k: float("nan") for k in ("lone_p50_ms", "engine_b1_ms", "decode_ms")}
    took, engine, dec = (np.array(col) * 1000 for col in zip(*lone, strict=True))
    return {
        "lone_p50_ms": round(float(np.median(took)), 1),
        "engine_b1_ms": round(float(np.median(engine)), 1),
        "decode_ms": round(float(np.median(dec)), 2),
        "lone_over_ms": round(float(np.median(took - engine - dec)), 2),
    }


def report(result: dict[str, object]) -> None:
    """Print the Markdown table row for BENCHMARKS.md."""
    keys = [
        "model",
        "provider",
        "precision",
        "batch",
        "clients",
        "raw_clips_s",
        "raw_before_after",
        "service_clips_s",
        "ratio",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "lone_p50_ms",
        "engine_b1_ms",
        "decode_ms",
        "lone_over_ms",
        "lone_server_cpu_ms",
        "statuses",
        "peak_rss_mb",
    ]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    print("| " + " | ".join(str(result[k]) for k in keys) + " |")


def _engine(args: argparse.Namespace) -> OrtBackend:
    options = BackendOptions(device=args.device, precision=args.precision, threads=args.threads)
    return OrtBackend(args.bundle, options)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args()
    engine = _engine(args)
    card, provider, precision = engine.card, engine.provider, engine.precision
    clips = load_clips(args.audio_dir, card.sample_rate, card.clip_samples)
    log.info("raw engine: %s %s on %s, batch %d ...", card.name, precision, provider, args.batch)
    raw_before = raw_throughput(engine, clips, args.batch, args.raw_seconds)
    bodies = [audio_file(c, card.sample_rate) for c in clips]  # encoded once, used by both
    reference = Reference(engine, clips, bodies, card.sample_rate)
    del engine  # the reference holds it until the lone requests are timed
    loaded, rss, lone, lone_cpu_ms = run_service(args, bodies, reference, card.sample_rate)
    lat, statuses, elapsed = loaded.latencies, loaded.statuses, loaded.duration_s
    # the raw engine again, the service stopped: a machine whose speed drifts between the
    # two phases shows as two different raw figures; the ratio is over their mean
    log.info("raw engine again ...")
    raw_after = raw_throughput(_engine(args), clips, args.batch, args.raw_seconds)
    raw = (raw_before + raw_after) / 2
    served = statuses.get(200, 0) / elapsed
    p50, p95, p99 = (
        float(np.percentile(lat, q)) * 1000 if lat else float("nan") for q in (50, 95, 99)
    )
    result: dict[str, object] = {
        "model": card.name,
        "provider": provider,
        "precision": precision,
        "batch": args.batch,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "raw_clips_s": round(raw, 2),  # the mean of the runs before and after the service
        "raw_before_after": [round(raw_before, 2), round(raw_after, 2)],
        "service_clips_s": round(served, 2),
        "ratio": round(served / raw, 3),
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
        **lone_summary(lone),
        "lone_server_cpu_ms": round(lone_cpu_ms, 2),  # per lone request, every process
        "workers": args.workers,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "client_cpu_ms_per_clip": round(1000 * loaded.client_cpu_s / max(1, len(lat)), 2),
        "peak_rss_mb": round(rss, 1),  # all service processes summed, sampled: PeakTreeRss
        "cpus": os.cpu_count(),
    }
    report(result)
    save_json(args.json, result)


if __name__ == "__main__":
    main()
