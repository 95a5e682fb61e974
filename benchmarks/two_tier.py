"""Two tiers vs one process: same scores? what does the hop to the engine cost per clip?

    python benchmarks/two_tier.py [--bundle DIR | --arch MobileNetV1 | --nearfree] [--clips 12]
                                  [--requests 40] [--clients 8] [--seconds 20] [--json PATH]

Starts an engine replica (``python -m service``, ONNX Runtime on the bundle) and a front
replica (``PANNS_BACKEND=oip``, the same ``model.json`` only, ``PANNS_ENGINE_URL`` = the engine),
both with ``PANNS_WORKERS=1``. The one-process service is the engine itself, called on /v1.
Without ``--bundle`` a bundle is exported like the service tests do (zoo model, seeded weights,
real BatchNorm statistics) into ``--cache``; ``--nearfree`` serves ``benchmarks/nearfree.py``'s
bundle instead, whose compute is one pass over the samples, so the hop is all that differs.

- ``parity``: every clip (real recordings of ``../shared/audio`` cut to 10 s, plus generated
  clips of 3, 25 and 47 s: padded and multi-window) tagged and embedded by both; max abs diff.
- ``hop``: the oip backend's ``run`` of a batch against the engine minus the ORT backend's
  ``run`` of the same batch in this process, alternating: ms per clip (the engine's compute
  and the local one are the same work, so the difference is the hop, within the noise).
- ``transport``: a ``[B, 10 s]`` FP32 batch sent with binary data and parsed by the engine,
  which then refuses it (``window_s`` too small) before any decoding or compute: the hop's
  transfer and parsing alone, ms per clip.
- ``latency``: ``--requests`` sequential 10 s clips (one client): p50 / p95 of each setup.
- ``throughput``: ``--clients`` concurrent clients for ``--seconds`` uploading 10 s clips
  (Ogg Vorbis by default, as users upload compressed audio; ``--format wav``): clips per
  second, and the CPU milliseconds per clip each process spent (the engine's is what a GPU
  node would spend: with two tiers it no longer decodes, it pays the hop instead).

Both tiers share this machine's cores, so the two-tier throughput here includes the front's
decoding on the same cores the engine computes on; on two machines it would not. Prints one
JSON document. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    cpu_model,
    free_port,
    start_service,
    tree_usage,
    wait_ready,
)
from benchmarks.formats import audio_file  # noqa: E402
from benchmarks.service import load, load_clips  # noqa: E402
from service.core.backends import BackendOptions  # noqa: E402
from service.core.backends.oip import OipBackend  # noqa: E402
from service.core.backends.ort import OrtBackend  # noqa: E402
from service.core.card import read_card  # noqa: E402
from service.oip import HEADER, RequestedOutput, Tensor, encode_request  # noqa: E402


def bundle_for(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    if args.nearfree:
        from benchmarks.nearfree import build_nearfree_bundle

        return build_nearfree_bundle(Path(args.cache) / "nearfree", fp16=False)
    from tests.service.conftest import export  # the tests' deterministic zoo-model export

    return export(args.arch, Path(args.cache))


def parity_clips(args: argparse.Namespace, rate: int, samples: int) -> list[np.ndarray]:
    """Real recordings cut to 10 s, generated clips of 3, 25 and 47 s, then 10 s ones."""
    real = load_clips(args.audio_dir, rate, samples) if args.audio_dir.is_dir() else []
    rng = np.random.default_rng(0)
    count = max(args.clips, 4)
    lengths = [3.0, 25.0, 47.0] + [10.0] * max(0, count - 3 - len(real))
    made = [
        (0.1 * rng.standard_normal(round(s * rate))).clip(-0.99, 0.99).astype(np.float32)
        for s in lengths
    ]
    return real[: count - 3] + made


def encoded(clip: np.ndarray, rate: int, fmt: str) -> bytes:
    return audio_file(clip, rate) if fmt == "wav" else audio_file(clip, rate, "OGG", "VORBIS")


def parity(one: str, two: str, bodies: list[bytes]) -> dict[str, Any]:
    diffs: dict[str, float] = {"scores": 0.0, "embedding": 0.0}
    with httpx.Client(timeout=300) as http:
        for body in bodies:
            for path, key in (("/v1/tag", "scores"), ("/v1/embed", "embedding")):
                a, b = (
                    http.post(f"{u}{path}", files=[("file", ("c.wav", body))]) for u in (one, two)
                )
                if a.status_code != 200 or b.status_code != 200:
                    return {"error": f"{path}: {a.status_code} / {b.status_code}"}
                x = np.asarray(a.json()["results"][0][key])
                y = np.asarray(b.json()["results"][0][key])
                diffs[key] = max(diffs[key], float(np.abs(x - y).max()))
    return {"clips": len(bodies), "max_abs_diff": diffs}


def hop(
    bundle: Path, engine_url: str, clip: np.ndarray, sizes: list[int], rounds: int
) -> dict[str, Any]:
    """ms per clip of one batch: over OIP to the engine vs ORT in this process."""
    local = OrtBackend(bundle, BackendOptions(device="cpu"))
    remote = OipBackend(bundle, BackendOptions(url=engine_url))
    out: dict[str, Any] = {}
    for size in sizes:
        batch = np.stack([clip] * size)
        times: dict[str, list[float]] = {"local": [], "oip": []}
        for backend in (local, remote, local, remote):
            backend.run(batch)  # warm
        for _ in range(rounds):  # alternating, so machine noise hits both alike
            for name, backend in (("local", local), ("oip", remote)):
                t0 = time.perf_counter()
                backend.run(batch)
                times[name].append(time.perf_counter() - t0)
        ms = {k: 1000 * statistics.median(v) / size for k, v in times.items()}
        out[f"batch_{size}"] = {
            "local_ms_per_clip": round(ms["local"], 2),
            "oip_ms_per_clip": round(ms["oip"], 2),
            "hop_ms_per_clip": round(ms["oip"] - ms["local"], 2),
        }
    return out


def transport(
    url: str, name: str, clip: np.ndarray, sizes: list[int], rounds: int
) -> dict[str, float]:
    """ms per clip to send a batch over OIP and have the engine parse it (no compute)."""
    out = {}
    with httpx.Client(base_url=url, timeout=300) as http:
        for size in sizes:
            batch = np.stack([clip] * size)
            body, header = encode_request(
                [Tensor("waveform", "FP32", batch.shape, batch)],
                [RequestedOutput("clipwise_output", True)],
                {"window_s": 0.001},
            )
            times = []
            for _ in range(rounds + 1):
                t0 = time.perf_counter()
                r = http.post(
                    f"/v2/models/{name}/infer", content=body, headers={HEADER: str(header)}
                )
                times.append(time.perf_counter() - t0)
                assert r.status_code == 422, r.text  # parsed, then refused before decoding
            out[f"batch_{size}_ms_per_clip"] = round(1000 * statistics.median(times[1:]) / size, 2)
    return out


def latency(url: str, body: bytes, requests: int) -> dict[str, float]:
    times = []
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/tag", files=[("file", ("c.wav", body))])
        for _ in range(requests):
            t0 = time.perf_counter()
            r = http.post("/v1/tag", files=[("file", ("c.wav", body))])
            assert r.status_code == 200, r.text
            times.append(1000 * (time.perf_counter() - t0))
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
    }


def throughput(
    url: str, bodies: list[bytes], clients: int, seconds: float, pids: dict[str, int]
) -> dict[str, Any]:
    """Clips per second under load, and each process's CPU milliseconds per clip."""
    before = {name: tree_usage(pid).cpu_s for name, pid in pids.items()}
    lat, statuses, elapsed = asyncio.run(load(url, bodies, clients, seconds))
    done = max(1, statuses.get(200, 0))
    return {
        "clips_s": round(statuses.get(200, 0) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if lat else None,
        "cpu_ms_per_clip": {
            name: round(1000 * (tree_usage(pid).cpu_s - before[name]) / done, 1)
            for name, pid in pids.items()
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="a bundle dir (default: export --arch into --cache)")
    p.add_argument("--arch", default="MobileNetV1")
    p.add_argument(
        "--nearfree",
        action="store_true",
        help="serve benchmarks/nearfree.py's bundle: the model costs ~nothing, the hop shows",
    )
    p.add_argument("--cache", default="/tmp/panns-bench-bundles")
    p.add_argument("--audio-dir", type=Path, default=REPO.parent / "shared" / "audio")
    p.add_argument("--clips", type=int, default=12, help="parity clips")
    p.add_argument("--batch", type=int, default=8, help="PANNS_MAX_BATCH of both tiers")
    p.add_argument("--requests", type=int, default=40, help="sequential latency requests")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument(
        "--format", default="ogg", choices=["ogg", "wav"], help="uploads of the load phase"
    )
    p.add_argument("--seconds", type=float, default=20, help="throughput load duration")
    p.add_argument("--rounds", type=int, default=20, help="hop rounds per batch size")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def measure(
    args: argparse.Namespace, bundle: Path, one: str, two: str, pids: dict[str, int]
) -> dict[str, Any]:
    card = read_card(bundle)
    clips = parity_clips(args, card.sample_rate, card.clip_samples)
    ten = [c for c in clips if c.shape[0] == card.clip_samples]
    bodies = [audio_file(c, card.sample_rate) for c in ten]
    loads = [encoded(c, card.sample_rate, args.format) for c in ten]
    sizes = sorted({1, args.batch})
    result: dict[str, Any] = {
        "model": card.name,
        "arch": card.arch,
        "batch": args.batch,
        "machine": machine(),
        "parity": parity(one, two, [audio_file(c, card.sample_rate) for c in clips]),
        "hop": hop(bundle, one, ten[0], sizes, args.rounds),
        "transport": transport(one, card.name, ten[0], sizes, args.rounds),
        "latency": {
            "one_process": latency(one, bodies[0], args.requests),
            "two_tier": latency(two, bodies[0], args.requests),
        },
        "throughput": {
            "clients": args.clients,
            "upload_format": args.format,
            "one_process": throughput(
                one, loads, args.clients, args.seconds, {"engine": pids["engine"]}
            ),
            "two_tier": throughput(two, loads, args.clients, args.seconds, pids),
        },
    }
    lat = result["latency"]
    lat["hop_p50_ms"] = round(lat["two_tier"]["p50_ms"] - lat["one_process"]["p50_ms"], 1)
    result["machine"]["load_avg_end"] = os.getloadavg()
    return result


def main() -> None:
    args = parse_args()
    bundle = bundle_for(args)
    ports = free_port(), free_port()
    one, two = (f"http://127.0.0.1:{p}" for p in ports)
    common = {
        "PANNS_MODELS": str(bundle),
        "PANNS_WORKERS": "1",
        "PANNS_MAX_BATCH": str(args.batch),
        "PANNS_MAX_QUEUE": "4096",
        "PANNS_MAX_WINDOWS": "512",
    }
    engine, front = start_service(ports[0], common), None
    try:
        wait_ready(ports[0], engine)
        front = start_service(ports[1], {**common, "PANNS_BACKEND": "oip", "PANNS_ENGINE_URL": one})
        wait_ready(ports[1], front)
        result = measure(args, bundle, one, two, {"engine": engine.pid, "front": front.pid})
    finally:
        for proc in (front, engine):
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
