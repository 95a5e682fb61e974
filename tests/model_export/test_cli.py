"""``python -m model_export`` and ``python -m model_export.ensure`` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.core.card import load_bundle
from tests.conftest import REPO_ROOT
from tests.model_export.conftest import seeded_model, write_recordings
from training.audioset import name_to_index
from training.checkpoints import OFFICIAL, sha256_file

LABELS = ["Dog", "Siren", "my doorbell"]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )


def fine_tuned_checkpoint(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model = seeded_model("LeeNet11", seed=seed, classes_num=len(LABELS))
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "LeeNet11",
            "model_args": {"classes_num": len(LABELS)},
            "labels": LABELS,
        },
        path,
    )
    return path


def test_cli_exports_a_fine_tuned_checkpoint(tmp_path: Path) -> None:
    ckpt = fine_tuned_checkpoint(tmp_path / "finetuned.pth")
    out = tmp_path / "bundle"
    calib = write_recordings(tmp_path / "recordings")
    result = run(
        [
            "-m",
            "model_export",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--int8",
            "--calibration-dir",
            str(calib),
            "--name",
            "doorbells",
            "-q",
        ]
    )
    assert result.returncode == 0, result.stderr
    card = load_bundle(out)
    assert card.name == "doorbells" and card.arch == "LeeNet11"
    assert [label.display_name for label in card.labels] == LABELS
    dog = name_to_index()["Dog"]
    assert card.labels[0].mid == next(m for m, i in _mids().items() if i == dog)
    assert card.labels[2].mid == "my doorbell"
    assert card.source.checkpoint == "finetuned.pth"
    assert card.source.sha256 == sha256_file(ckpt)
    assert card.parity["int8"].inputs == ["3 recordings from recordings/ (10s each)"]
    assert "int8" in result.stdout and "doorbells" in result.stdout


def _mids() -> dict[str, int]:
    from training.audioset import mid_to_index

    return mid_to_index()


def test_cli_reports_a_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run(
        [
            "-m",
            "model_export",
            "--checkpoint",
            str(bad),
            "--arch",
            "Cnn6",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    assert result.returncode == 1
    assert "broken.pth" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ensure_offline_names_the_file_to_fetch(tmp_path: Path) -> None:
    entry = OFFICIAL["LeeNet11"]
    env = {
        "PANNS_MODEL": "LeeNet11",
        "PANNS_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "PANNS_MODELS": str(tmp_path / "bundle"),
        "PANNS_CHECKPOINT_URL": f"http://127.0.0.1:{_closed_port()}/{{name}}",
    }
    result = run(["-m", "model_export.ensure", "-q"], env)
    assert result.returncode == 1
    for expected in (
        entry.file_name,
        str(entry.bytes),
        entry.sha256,
        "127.0.0.1",
        str(tmp_path / "ckpt"),
    ):
        assert expected in result.stderr
    assert not (tmp_path / "bundle").exists()


def test_ensure_exports_once_then_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_export.ensure import main

    ckpt = fine_tuned_checkpoint(tmp_path / "finetuned.pth")
    env = {"PANNS_CHECKPOINT": str(ckpt), "PANNS_MODELS": f"{tmp_path / 'b'},/elsewhere"}
    first = run(["-m", "model_export.ensure", "-q"], env)  # the command, as make serve runs it
    assert first.returncode == 0, first.stderr
    assert load_bundle(tmp_path / "b").source.checkpoint == "finetuned.pth"
    stamp = (tmp_path / "b" / "model.onnx").stat().st_mtime_ns
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["-q"]) == 0  # in-process from here on (faster): a verified bundle is kept
    assert (tmp_path / "b" / "model.onnx").stat().st_mtime_ns == stamp
    retrained = fine_tuned_checkpoint(tmp_path / "retrained" / "finetuned.pth", seed=1)
    ckpt.write_bytes(retrained.read_bytes())  # same name, new weights: exported again
    assert main(["-q"]) == 0
    assert load_bundle(tmp_path / "b").source.sha256 == sha256_file(ckpt)
    (tmp_path / "b" / "model.onnx").write_bytes(b"damaged")  # a broken bundle is rebuilt
    monkeypatch.setenv("PANNS_EXPORT_VARIANTS", "int8")
    assert main(["-q"]) == 0
    assert set(load_bundle(tmp_path / "b").files) == {"fp32", "int8"}
    # without PANNS_MODEL / PANNS_CHECKPOINT a verified bundle of one's own is served as is
    stamp = (tmp_path / "b" / "model.onnx").stat().st_mtime_ns
    monkeypatch.delenv("PANNS_CHECKPOINT")
    monkeypatch.delenv("PANNS_MODEL", raising=False)
    monkeypatch.setenv("PANNS_EXPORT_VARIANTS", "")
    monkeypatch.setenv("PANNS_CHECKPOINT_URL", f"http://127.0.0.1:{_closed_port()}/{{name}}")
    assert main(["-q"]) == 0
    assert (tmp_path / "b" / "model.onnx").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "models/cnn14"),
        ({"PANNS_MODEL": "Cnn14_DecisionLevelAtt"}, "models/cnn14_decisionlevelatt"),
        ({"PANNS_CHECKPOINT": "/ckpt/My_Birds.pth"}, "models/my_birds"),
        ({"PANNS_MODEL": "Cnn10", "PANNS_MODELS": "/srv/a, /srv/b"}, "/srv/a"),
    ],
)
def test_print_dir_names_the_bundle_make_serve_loads(
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make serve` hands this directory to the service, so both agree on one bundle."""
    from model_export.ensure import main

    for key in ("PANNS_MODEL", "PANNS_CHECKPOINT", "PANNS_MODELS", "PANNS_EXPORT_VARIANTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--print-dir"]) == 0
    assert capsys.readouterr().out.strip() == expected


def _as_first_recipe(bundle: Path, **source: str) -> int:
    """Rewrite the card as model_export wrote it before it recorded its recipe; return the
    graph's mtime, which tells whether a later ensure exported again."""
    card_path = bundle / "model.json"
    card = json.loads(card_path.read_text())
    del card["export_recipe"]
    card["source"].update(source)
    card_path.write_text(json.dumps(card))
    assert load_bundle(bundle).export_recipe == 1
    return (bundle / "model.onnx").stat().st_mtime_ns


def test_ensure_exports_a_bundle_of_an_older_recipe_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_export.card import EXPORT_RECIPE
    from model_export.ensure import main

    bundle = tmp_path / "b"
    ckpt = fine_tuned_checkpoint(tmp_path / "finetuned.pth")
    monkeypatch.setenv("PANNS_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("PANNS_MODELS", str(bundle))
    monkeypatch.delenv("PANNS_EXPORT_VARIANTS", raising=False)
    assert main(["-q"]) == 0
    assert load_bundle(bundle).export_recipe == EXPORT_RECIPE
    stamp = _as_first_recipe(bundle)
    assert main(["-q"]) == 0  # the checkpoint is here: exported again with today's recipe
    assert load_bundle(bundle).export_recipe == EXPORT_RECIPE
    assert (bundle / "model.onnx").stat().st_mtime_ns != stamp


def test_ensure_serves_an_older_recipe_when_it_cannot_export_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_export import export_bundle
    from model_export.ensure import main

    bundle = tmp_path / "b"
    export_bundle(seeded_model("LeeNet11"), bundle, arch="LeeNet11")
    official = OFFICIAL["LeeNet11"]  # the card claims the official file, which is not on disk
    stamp = _as_first_recipe(bundle, checkpoint=official.file_name, sha256=official.sha256)
    monkeypatch.setenv("PANNS_MODEL", "LeeNet11")
    monkeypatch.setenv("PANNS_MODELS", str(bundle))
    monkeypatch.setenv("PANNS_CHECKPOINT_DIR", str(tmp_path / "no-checkpoints"))
    monkeypatch.setenv("PANNS_CHECKPOINT_URL", f"http://127.0.0.1:{_closed_port()}/{{name}}")
    monkeypatch.delenv("PANNS_CHECKPOINT", raising=False)
    monkeypatch.delenv("PANNS_EXPORT_VARIANTS", raising=False)
    assert main(["-q"]) == 0  # served as it is, no download attempted
    assert (bundle / "model.onnx").stat().st_mtime_ns == stamp
