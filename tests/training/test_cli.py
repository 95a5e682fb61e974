"""The training command lines answer a user's mistake with one ``error:`` line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO_ROOT)


@pytest.mark.slow  # each case starts a Python that imports torch (~5 s)
@pytest.mark.parametrize(("args", "says"), [
    (("training.train", "--arch", "Nope", "--train", "x.h5", "--eval", "x.h5", "--steps", "1",
      "--out", "{tmp}/run"), "unknown model 'Nope'; known models: Cnn6"),
    (("training.evaluate", "--checkpoint", "{tmp}/notes.txt", "--data", "x.h5"),
     "notes.txt: is not a PyTorch checkpoint"),
    (("training.finetune", "--checkpoint", "{tmp}/missing.pth", "--data", "{tmp}",
      "--out", "{tmp}/ft"), "missing.pth: no such checkpoint file"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    result = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert says in result.stderr
