"""Which router a benchmark run starts: the working tree's, or the one of an older commit (the previous policy).

The older router is exported without touching the working tree (`git archive <rev> speech_router | tar -x`)
into the run's temporary directory and started as `python -m speech_router.cli serve ...` with
`PYTHONPATH=<export>` and its working directory there, so `speech_router` is imported from the export and not
from the repository (with `-m`, the working directory comes first on `sys.path`). It runs in this
interpreter's environment, so its dependencies are the current ones. `export()` checks where the package is
really imported from before any run uses it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench._procs import REPO, router_command

#: the commit whose routing policy issue #11 replaces (the last commit before the routing core v2)
PREVIOUS_REV = "a406d86"


@dataclass
class RouterImpl:
    """How to start one router: its command, extra environment and working directory."""

    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    #: where `speech_router` is imported from, as the started interpreter reports it
    package: str = ""
    rev: str = ""


def current() -> RouterImpl:
    """The router of the working tree (the installed, editable `speech-router`), as it is at each start."""
    return RouterImpl("working tree", router_command(), package=_package_file(sys.executable, None, REPO),
                      rev="working tree")


def router_at(rev: str, dest: Path) -> RouterImpl:
    """``rev``'s router, exported into ``dest``, or the working tree's for ``worktree``.

    An export is a snapshot: the whole run uses one version of the code even while others edit and commit in the
    working tree (a run once died half-way when a module it imported was moved meanwhile)."""
    return current() if rev == "worktree" else export(rev, dest)


def export(rev: str, dest: Path) -> RouterImpl:
    """The router package of commit ``rev``, exported into ``dest`` and checked to import from there."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "speech_router"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = {"PYTHONPATH": str(dest)}
    package = _package_file(sys.executable, env, dest)
    if not Path(package).resolve().is_relative_to(dest.resolve()):
        raise RuntimeError(f"the export of {rev} in {dest} imports speech_router from {package}, not from the export")
    full = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()
    label = f"commit {full}" + (f" ({rev})" if rev != full else "")
    return RouterImpl(label, [sys.executable, "-m", "speech_router.cli"], env, dest, package, full)


def _package_file(python: str, env: dict[str, str] | None, cwd: Path) -> str:
    out = subprocess.run([python, "-c", "import speech_router; print(speech_router.__file__)"], cwd=cwd,
                         env={**os.environ, **env} if env else None, capture_output=True, text=True, check=True)
    return out.stdout.strip()
