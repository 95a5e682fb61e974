"""End to end on CPU: synth -> pack -> train -> evaluate -> export -> serve -> POST a siren.

And fine-tuning: the trained checkpoint is fine-tuned on a folder data set with custom label
names, exported and served; the service answers with those labels.

Every step runs its real command line in a subprocess, the service included (real uvicorn,
real HTTP). Sizes are chosen to finish in a few minutes on two busy cores: 3-second clips,
MobileNetV1 with 32 mel bins, a 512-sample window and a 640-sample hop, trained on 1.5-second
random crops without SpecAugment (its 64-frame stripes would erase most of such a crop) or
mixup.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow
Serve = Callable[[Path], str]  # bundle directory -> base URL of a running service

CLIP_SECONDS = "3"
# A cheaper front end than the checkpoints' (1024/320/64): a quarter of the log-mel cells.
MODEL_ARGS = '{"mel_bins": 32, "hop_size": 640, "window_size": 512}'
# Measured: eval mAP 0.68-0.73 after 120 steps on an AVX2 CPU (chance is the mean class
# prevalence, about 0.23 on this set). Training numerics differ between CPUs (oneDNN picks
# other kernels on AVX-512), and at 120 steps an AVX-512 machine still ranked "Beep, bleep"
# over "Siren" for the test siren: 200 steps pass on both.
MIN_MAP = 0.45
# Fine-tuning data: synthetic classes renamed to labels AudioSet does not have.
CUSTOM = {"Siren": "alarm", "Beep, bleep": "beeper", "Sine wave": "hum-tone", "White noise": "hiss"}


def _run(*args: str, timeout: float = 300) -> str:
    """``python -m ARGS`` from the repo root; its stdout (stderr shown on failure).

    One thread: on a shared two-core machine torch's default of one thread per core makes
    training several times slower through oversubscription.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def _synth_and_pack(root: Path, name: str, clips: int, seed: int) -> Path:
    _run(
        "training.synth",
        "--out",
        str(root / name),
        "--clips",
        str(clips),
        "--seed",
        str(seed),
        "--clip-seconds",
        CLIP_SECONDS,
        "--no-speech",
        "--no-progress",
    )
    pack = root / f"{name}.h5"
    _run(
        "training.data",
        "pack",
        "--csv",
        str(root / name / "segments.csv"),
        "--audio-dir",
        str(root / name / "audio"),
        "--out",
        str(pack),
        "--clip-seconds",
        CLIP_SECONDS,
        "--workers",
        "0",
        "--no-progress",
    )
    return pack


def _siren_wav(seed: int = 5) -> bytes:
    from training.synth import make_siren

    wave = make_siren(32000, float(CLIP_SECONDS), np.random.default_rng(seed))
    buf = io.BytesIO()
    sf.write(buf, wave, 32000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start ``python -m service`` on a bundle; yields a function bundle -> base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(bundle: Path) -> str:
        import httpx

        port = free_port()
        env = {
            **os.environ,
            "PANNS_MODELS": str(bundle),
            "PANNS_HOST": "127.0.0.1",
            "PANNS_PORT": str(port),
            "PANNS_DEVICE": "cpu",
            "PANNS_WARMUP": "none",
            "PANNS_LOG_LEVEL": "warning",
        }
        log = tmp_path / f"service-{port}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=REPO_ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, f"service exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("service did not become ready in 90 s")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tag(url: str, wav: bytes) -> dict:
    import httpx

    response = httpx.post(
        f"{url}/v1/tag",
        params={"pad": "false", "top_k": 5},
        files={"file": ("siren.wav", wav, "audio/wav")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    train = _synth_and_pack(root, "train", clips=160, seed=1)
    held_out = _synth_and_pack(root, "eval", clips=48, seed=2)
    run = root / "run"
    _run(
        "training.train",
        "--arch",
        "MobileNetV1",
        "--train",
        str(train),
        "--eval",
        str(held_out),
        "--out",
        str(run),
        "--steps",
        "200",
        "--eval-every",
        "40",
        "--batch-size",
        "16",
        "--crop-seconds",
        "1.5",
        "--no-spec-augment",
        "--mixup-alpha",
        "0",
        "--model-args",
        MODEL_ARGS,
        "--workers",
        "0",
        "--device",
        "cpu",
        "--seed",
        "1",
        timeout=600,
    )
    return {"root": root, "run": run, "eval": held_out}


def test_train_evaluate_export_serve(trained: dict[str, Path], serve: Serve) -> None:
    run, root = trained["run"], trained["root"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in log] == [40, 80, 120, 160, 200]
    best = run / "checkpoints" / "best.pth"
    table = root / "per_class.csv"
    summary = json.loads(
        _run(
            "training.evaluate",
            "--checkpoint",
            str(best),
            "--data",
            str(trained["eval"]),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--csv",
            str(table),
            "--json",
        )
    )
    assert summary["mAP"] == pytest.approx(max(x["mAP"] for x in log), abs=1e-6)
    assert summary["mAP"] > MIN_MAP, summary
    assert summary["classes_scored"] == 8
    rows = table.read_text().splitlines()
    assert rows[0] == "index,label,ap,auc,positives" and len(rows) == 528
    assert any(row.split(",")[1] == "Siren" and row.split(",")[2] for row in rows)

    bundle = root / "bundle"
    _run("model_export", "--checkpoint", str(best), "--out", str(bundle), timeout=300)
    url = serve(bundle)
    result = _tag(url, _siren_wav())
    assert result["top"][0]["label"] == "Siren", result["top"]
    assert result["top"][0]["score"] > result["top"][1]["score"]
    assert len(result["scores"]) == 527


def test_finetune_folder_export_serve(trained: dict[str, Path], serve: Serve) -> None:
    root = trained["root"]
    synth = root / "folder_all"
    _run(
        "training.synth",
        "--out",
        str(synth),
        "--clips",
        "48",
        "--seed",
        "3",
        "--layout",
        "folder",
        "--clip-seconds",
        CLIP_SECONDS,
        "--no-speech",
        "--no-progress",
    )
    data = root / "folder"
    for original, custom in CUSTOM.items():
        shutil.copytree(synth / original, data / custom)
    run = root / "finetune"
    out = _run(
        "training.finetune",
        "--checkpoint",
        str(trained["run"] / "checkpoints/best.pth"),
        "--data",
        str(data),
        "--out",
        str(run),
        "--freeze-base",
        "--steps",
        "150",
        "--eval-every",
        "20",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--clip-seconds",
        CLIP_SECONDS,
        "--crop-seconds",
        "1.5",
        "--no-spec-augment",
        "--mixup-alpha",
        "0",
        "--holdout",
        "0.25",
        "--workers",
        "0",
        "--device",
        "cpu",
        timeout=400,
    )
    result = json.loads(out.strip().splitlines()[-1])
    labels = sorted(CUSTOM.values())
    assert result["labels"] == labels
    assert (run / "labels.txt").read_text().split("\n")[:4] == labels
    checkpoint = Path(result["checkpoint"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # Measured: held-out (6 clips) mAP 1.0 from step 40 on; the new head starts near chance.
    # That early head (the best checkpoint when ties went to the first) ranked "alarm" first
    # for 2 of 20 sirens on an AVX2 CPU; at 150 steps (ties go to the later) for 17 of 20,
    # 6 of the 7 below.
    assert max(x["mAP"] for x in log) >= 0.8, log
    assert log[-1]["train_loss"] < log[0]["train_loss"], log

    bundle = root / "finetuned_bundle"
    _run("model_export", "--checkpoint", str(checkpoint), "--out", str(bundle), timeout=300)
    url = serve(bundle)
    tops = []
    for seed in range(11, 18):  # a clear majority, not one siren: numerics differ by CPU
        tagged = _tag(url, _siren_wav(seed=seed))
        assert len(tagged["scores"]) == len(labels)
        assert {t["label"] for t in tagged["top"]} <= set(labels)
        tops.append(tagged["top"][0]["label"])
    assert tops.count("alarm") >= 5, tops
