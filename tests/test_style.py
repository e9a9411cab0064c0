"""Style: ruff's lint (pyflakes, import order, lines of at most 100 characters, bugbear,
pyupgrade, simplify and ruff's own rules) and its formatter, as configured in pyproject.toml,
over the whole repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.slow
def test_ruff_check_is_clean():
    result = _ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ruff_format_leaves_every_file_as_it_is():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
