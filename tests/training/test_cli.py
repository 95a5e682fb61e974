"""The training command lines answer a user's mistake with one ``error:`` line, not a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )


@pytest.mark.slow  # each case starts a Python that imports torch (~5 s)
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            (
                "training.train",
                "--arch",
                "Nope",
                "--train",
                "x.h5",
                "--eval",
                "x.h5",
                "--steps",
                "1",
                "--out",
                "{tmp}/run",
            ),
            "unknown model 'Nope'; known models: Cnn6",
        ),
        (
            ("training.evaluate", "--checkpoint", "{tmp}/notes.txt", "--data", "x.h5"),
            "notes.txt: is not a PyTorch checkpoint",
        ),
        (
            (
                "training.finetune",
                "--checkpoint",
                "{tmp}/missing.pth",
                "--data",
                "{tmp}",
                "--out",
                "{tmp}/ft",
            ),
            "missing.pth: no such checkpoint file",
        ),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    result = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert says in result.stderr


PARSERS = [
    "training.train",
    "training.finetune",
    "training.evaluate",
    "training.report",
    "training.synth.__main__",
    "training.data.__main__",
    "training.checkpoints.__main__",
]


def _parsers(module: str) -> list[argparse.ArgumentParser]:
    """The command's parser and its subcommands' parsers."""
    parser = importlib.import_module(module).build_parser()
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.values())
    return found


@pytest.mark.parametrize("module", PARSERS)
def test_every_option_has_help(module: str) -> None:
    for parser in _parsers(module):
        bare = [
            a.option_strings or a.dest
            for a in parser._actions
            if not a.help and not isinstance(a, argparse._SubParsersAction)
        ]
        assert not bare, f"{parser.prog}: no help text for {bare}"


@pytest.mark.parametrize("module", PARSERS)
def test_usage_lines_have_no_runs_of_spaces(module: str) -> None:
    """The usage examples of the descriptions continue lines with a backslash, which a plain
    (not raw) docstring turns into a run of spaces inside one line."""
    for parser in _parsers(module):
        for line in (parser.description or "").splitlines():
            assert not re.search(r"\S {3,}[\[-]", line), f"{parser.prog}: {line!r}"


def test_finetune_help_shows_what_finetuning_does() -> None:
    from training.finetune import FINETUNE_DEFAULTS, build_parser

    text = " ".join(build_parser().format_help().split())
    assert FINETUNE_DEFAULTS == {"steps": 1000, "lr": 1e-4, "eval_every": 200}
    for flag, default in (
        ("--steps STEPS", "1000"),
        ("--lr LR", "0.0001"),
        ("--eval-every EVAL_EVERY", "200"),
    ):
        assert re.search(rf"{flag} [^-]*\(default: {default}\)", text), flag
    assert re.search(r"--arch ARCH model architecture \(default: the checkpoint's", text)
    assert "1000000" not in text and "0.001)" not in text and "default: Cnn14" not in text
