"""Peak memory of receiving and decoding one upload, and the CPU cost per 10 s clip.

    python benchmarks/decode_memory.py [--minutes 1,10,60] [--baseline main]

For each upload size (44.1 kHz stereo 16-bit WAV, and 32 kHz mono 16-bit WAV) a fresh
subprocess feeds the file through python-multipart into the service's ``upload`` collector
in 64 KiB network-sized chunks, then decodes it the way the pipeline does (``part.data``,
drop the part's reference, ``AudioInput.decode`` to 32 kHz mono). It reports the peak RSS
(``getrusage`` maxrss) above the RSS before the upload, as MB and as a multiple of the
upload's size, and the RSS still held once the result is dropped.

``--baseline REF`` runs the same children on the ``service`` package of a git ref (extracted
with ``git archive``), side by side in one run. The ``per_clip`` section times decoding a
10 s clip (median of rounds) for both, and the stereo mix-down alone: ``mean(axis=1)``
against the column adds in ``service.core.mixdown``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_RATE = 32000
CHUNK = 64 * 1024
FORMATS = {"wav_44k1_stereo": (44100, 2), "wav_32k_mono": (32000, 1)}


def write_wav(path: Path, rate: int, channels: int, minutes: float) -> int:
    """A 16-bit WAV of band-limited noise, written in blocks (the parent stays small)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    frames = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, channels, "PCM_16", format="WAV") as out:
        for start in range(0, frames, rate * 10):
            n = min(rate * 10, frames - start)
            out.write((0.1 * rng.standard_normal((n, channels))).clip(-1, 1))
    return path.stat().st_size


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def receive(path: Path) -> object:
    """The upload as the service holds it: python-multipart -> ``upload`` collector."""
    from python_multipart import MultipartParser

    from service import upload

    collector = upload._Collector(max_files=1)
    parser = MultipartParser(b"xyz", collector.callbacks())  # type: ignore[arg-type]
    parser.write(b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n')
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            parser.write(chunk)
    parser.write(b"\r\n--xyz--\r\n")
    parser.finalize()
    return collector.parts[0]


def decode_upload(data: bytes) -> object:
    """The route's way: ``AudioInput(...).decode`` where the tree has it, else ``decode``."""
    try:
        from service.core.inputs import AudioInput
    except ImportError:  # trees from before service.core.inputs
        from service.core.audio import decode

        return decode(data, TARGET_RATE, 1e9)
    return AudioInput("upload", data=data).decode(TARGET_RATE, 1e9)


def child_memory(path: Path) -> dict[str, float]:
    """Run in a fresh process: receive + decode ``path``; memory as seen by the kernel."""
    base = max_rss_mb()
    start = time.perf_counter()
    part = receive(path)
    received = max_rss_mb()
    data = part.data  # type: ignore[attr-defined]
    part.chunks.clear()  # type: ignore[attr-defined]  # as routes/inference.py does
    decoded = decode_upload(data)
    seconds = time.perf_counter() - start
    del data, part
    peak = max_rss_mb()
    duration = decoded.duration_s  # type: ignore[attr-defined]
    del decoded
    return {
        "base_mb": base,
        "after_receive_mb": received - base,
        "peak_mb": peak - base,
        "held_after_mb": rss_mb() - base,
        "seconds": seconds,
        "duration_s": duration,
    }


def child_clip_ms(path: Path, rounds: int) -> float:
    from service.core.audio import decode

    data = path.read_bytes()
    decode(data, TARGET_RATE, 60)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        decode(data, TARGET_RATE, 60)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_child(tree: Path, *args: str) -> object:
    """This script in child mode, importing ``service`` from ``tree``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def extract(ref: str, into: Path) -> Path:
    """The ``service`` package as of git ``ref``, unpacked under ``into``."""
    blob = subprocess.run(
        ["git", "archive", "--format=tar", ref, "service"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def median_ms(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def resample_ms(rounds: int) -> dict[str, float]:
    """10 s of 44.1 kHz mono to 32 kHz: streamed in decode's blocks vs one call."""
    import soxr

    from service.core.audio import BLOCK_FRAMES

    mono = np.random.default_rng(0).standard_normal(441000).astype(np.float32)

    def streamed() -> None:
        stream = soxr.ResampleStream(44100, TARGET_RATE, 1, dtype="float32", quality="HQ")
        for start in range(0, mono.size, BLOCK_FRAMES):
            stream.resample_chunk(mono[start : start + BLOCK_FRAMES])
        stream.resample_chunk(np.zeros(0, np.float32), last=True)

    return {
        "streamed_ms": median_ms(streamed, rounds),
        "one_call_ms": median_ms(lambda: soxr.resample(mono, 44100, TARGET_RATE, "HQ"), rounds),
    }


def mixdown_ms(rounds: int) -> dict[str, float]:
    """A 10 s 44.1 kHz stereo float32 block mixed to mono: the old and the new way."""
    from service.core.mixdown import mix_into

    block = np.random.default_rng(0).standard_normal((441000, 2)).astype(np.float32)
    dest = np.empty(441000, np.float32)

    return {
        "mean_axis1_ms": median_ms(lambda: block.mean(axis=1), rounds),
        "column_add_ms": median_ms(lambda: mix_into(block, dest), rounds),
    }


def machine() -> dict[str, object]:
    """The parent's record of the host (a child may import another tree: no benchmarks)."""
    from benchmarks.common import cpu_flags, cpu_model

    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(("fma", "sse4_2", "avx2", "avx512f")),  # /proc/cpuinfo's order
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def measure(trees: dict[str, Path], files: dict[str, Path]) -> dict[str, object]:
    memory: dict[str, object] = {}
    for name, path in files.items():
        size_mb = path.stat().st_size / 1e6
        row: dict[str, object] = {"upload_mb": round(size_mb, 1)}
        for label, tree in trees.items():
            got = run_child(tree, "memory", str(path))
            assert isinstance(got, dict)
            got["peak_x_upload"] = got["peak_mb"] / size_mb
            row[label] = {k: round(v, 2) for k, v in got.items()}
        memory[name] = row
        print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return memory


def clips(tmp: Path, trees: dict[str, Path], rounds: int) -> dict[str, object]:
    per_clip: dict[str, object] = {
        "stereo_mixdown_10s": mixdown_ms(rounds * 4),
        "resample_10s_44k1_to_32k": resample_ms(rounds),
    }
    for fmt, (rate, channels) in FORMATS.items():
        path = tmp / f"clip_{fmt}.wav"
        write_wav(path, rate, channels, 10 / 60)
        per_clip[f"decode_10s_{fmt}_ms"] = {
            label: round(float(run_child(tree, "clip", str(path), str(rounds))), 2)  # type: ignore[arg-type]
            for label, tree in trees.items()
        }
    return per_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="1,10,60", help="upload lengths, comma-separated")
    parser.add_argument("--baseline", help="git ref whose service package to compare against")
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds per 10 s clip")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # cwd is the tree to measure; it must beat benchmarks/service.py
        sys.path.insert(0, os.getcwd())
        kind, path, *rest = args.child
        result = (
            child_memory(Path(path))
            if kind == "memory"
            else child_clip_ms(Path(path), int(rest[0]))
        )
        print(json.dumps(result))
        return
    sys.path.insert(0, str(REPO))  # the parent measures the mix-down of this checkout
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"current": REPO}
        if args.baseline:
            trees[f"baseline_{args.baseline}"] = extract(args.baseline, tmp / "baseline")
        files = {}
        for minutes in [float(m) for m in args.minutes.split(",")]:
            for fmt, (rate, channels) in FORMATS.items():
                path = tmp / f"{fmt}_{minutes:g}min.wav"
                write_wav(path, rate, channels, minutes)
                files[f"{fmt}_{minutes:g}min"] = path
        report = {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "memory": measure(trees, files),
            "per_clip": clips(tmp, trees, args.rounds),
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
