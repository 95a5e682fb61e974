"""The standing attack check: benchmarks/attack.py against a real server, briefly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_attack_cases_get_no_5xx_and_never_lock_out_a_normal_client(
    tagger_bundle: Path, sed_bundle: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/attack.py",
            "--bundle",
            str(tagger_bundle),
            "--bundle",
            str(sed_bundle),
            "--seconds",
            "2",
            "--clients",
            "2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    report = json.loads(out.stdout)
    total, cases = report["total"], report["cases"]
    assert total["cases"] == 10 and total["5xx"] == 0, cases
    assert total["min_normal_success_rate"] == 1.0, cases
    assert total["exit_status"] == 0
    for name, case in cases.items():
        assert case["normal_requests"] >= 1, name
        assert case["rss_after_mb"] - case["rss_before_mb"] < 400, (name, case)
