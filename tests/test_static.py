"""The static checks run with the suite, so README's one test command runs them too: mypy (pyproject.toml's
``[tool.mypy]``: strict, every module of ``speech_router``) and ruff (its ``[tool.ruff.lint]`` rules over the
whole repository). A finding fails the test with the checker's own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def check(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def test_mypy_finds_nothing_in_the_package():
    check("mypy")


def test_ruff_finds_nothing():
    check("ruff", "check", "--no-fix", ".")
