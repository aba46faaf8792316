"""CI runs the suite as two stages (issue 15, item 8): ``.ci/run`` is valid bash, runs lint, then
``make test-unit``, then ``make test-integration``, each behind a banner, and a failing stage
says its name; the README's ``make test`` still runs both."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CI = ROOT / ".ci" / "run"


def test_ci_script_is_valid_bash_and_runs_the_stages_in_order() -> None:
    assert subprocess.run(["bash", "-n", str(CI)], capture_output=True).returncode == 0
    stages = re.findall(r"^stage (\S+) (.+)$", CI.read_text(), flags=re.M)
    assert stages == [
        ("lint", "make lint"),
        ("unit", "make test-unit"),
        ("integration", "make test-integration"),
    ]


def _stage_function() -> str:
    text = CI.read_text()
    start = text.index("stage() {")
    return text[start : text.index("\n}\n", start) + 3]


def test_a_failing_stage_names_itself_and_stops() -> None:
    script = _stage_function() + "stage first true\nstage second false\nstage third true\n"
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert run.returncode == 1
    assert "=== CI stage: first (true) ===" in run.stdout
    assert "=== CI stage passed: first" in run.stdout
    assert "=== CI stage FAILED: second" in run.stderr
    assert "third" not in run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_test_runs_unit_then_integration() -> None:
    out = subprocess.run(
        ["make", "-n", "test"],  # -n: print the commands, run nothing
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    unit = out.index("pytest -q tests/unit")
    integration = out.index("pytest -q tests/integration")
    assert unit < integration
