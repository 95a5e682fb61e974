"""Bundles that ``make serve`` (``model_export.ensure``) makes from a training run's
checkpoint are named after the run, or as asked: never ``best`` or ``latest``."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.card import load_bundle
from tests.model_export.test_cli import fine_tuned_checkpoint

VARIABLES = (
    "PANNS_MODEL",
    "PANNS_CHECKPOINT",
    "PANNS_MODELS",
    "PANNS_EXPORT_VARIANTS",
    "PANNS_MODEL_NAME",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in VARIABLES:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PANNS_CHECKPOINT": "runs/birds/checkpoints/best.pth"}, "models/birds"),
        ({"PANNS_CHECKPOINT": "/srv/runs/Birds-2/checkpoints/latest.pth"}, "models/birds-2"),
        ({"PANNS_CHECKPOINT": "/exported/doorbells/best.pth"}, "models/doorbells"),
        ({"PANNS_CHECKPOINT": "/ckpt/best_of_three.pth"}, "models/best_of_three"),
        (
            {"PANNS_CHECKPOINT": "runs/a/checkpoints/best.pth", "PANNS_MODEL_NAME": "Doorbells"},
            "models/doorbells",
        ),
    ],
)
def test_print_dir_names_a_run_checkpoint_after_its_run(
    env: dict[str, str],
    expected: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from model_export.ensure import main

    for key, value in env.items():
        clean_env.setenv(key, value)
    assert main(["--print-dir"]) == 0
    assert capsys.readouterr().out.strip() == expected


def test_a_runs_best_checkpoint_is_served_under_the_runs_name(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """What `PANNS_CHECKPOINT=runs/birds/checkpoints/best.pth make serve` exports; then a
    name given with --name."""
    from model_export.ensure import main

    clean_env.chdir(tmp_path)  # the default bundle directory is models/<name> under the cwd
    fine_tuned_checkpoint(tmp_path / "runs" / "birds" / "checkpoints" / "best.pth")
    clean_env.setenv("PANNS_CHECKPOINT", "runs/birds/checkpoints/best.pth")
    assert main(["-q"]) == 0
    card = load_bundle(tmp_path / "models" / "birds")
    assert card.name == "birds" and card.source.checkpoint == "best.pth"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["birds"]

    clean_env.setenv("PANNS_MODELS", str(tmp_path / "served"))
    assert main(["-q", "--name", "front-door"]) == 0
    assert load_bundle(tmp_path / "served").name == "front-door"
    stamp = (tmp_path / "served" / "model.onnx").stat().st_mtime_ns
    assert main(["-q", "--name", "front-door"]) == 0  # as asked already: kept
    assert (tmp_path / "served" / "model.onnx").stat().st_mtime_ns == stamp


def test_an_official_file_given_as_a_checkpoint_is_named_by_its_model() -> None:
    from model_export.ensure import checkpoint_model_name, request_from_env

    """``PANNS_CHECKPOINT=.../Cnn14_mAP=0.431.pth`` serves as ``cnn14``, what ?model= takes."""
    request = request_from_env({"PANNS_CHECKPOINT": "/in/Cnn14_mAP=0.431.pth"}, set())
    assert request.bundle == Path("models/cnn14")
    assert checkpoint_model_name(Path("x/Wavegram_Logmel_Cnn14_mAP=0.439.pth")) == (
        "Wavegram_Logmel_Cnn14"
    )
