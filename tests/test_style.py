"""The code passes the project's linter and formatter (rules in pyproject.toml), so style
drift fails the test run rather than waiting for a reviewer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["loraplex", "tests", "benchmarks", "migrations"]


def _ruff() -> list[str]:
    beside_python = Path(sys.executable).with_name("ruff")
    found = str(beside_python) if beside_python.is_file() else shutil.which("ruff")
    assert found, "ruff is part of the dev extra (bash scripts/setup.sh installs it)"
    return [found]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    result = subprocess.run(
        [*_ruff(), *command, *PATHS], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
