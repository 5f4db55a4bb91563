"""The routing core stays small: importing it does not pull in audio processing, and nothing below it reaches up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "speech_router"


def test_importing_the_routing_core_loads_no_audio_library():
    code = ("import sys, speech_router.router; "
            "print(sorted(m for m in ('numpy', 'soxr', 'soundfile', 'av') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def imports_of(path: Path) -> set[str]:
    """The speech_router modules a file imports (relative imports resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("speech_router")}


def test_the_routing_core_imports_nothing_above_it():
    above = ("speech_router.api", "speech_router.fanout", "speech_router.voice_sync", "speech_router.cli")
    for path in (PACKAGE / "router").glob("*.py"):
        reaching_up = {name for name in imports_of(path) if name.startswith(above)}
        assert not reaching_up, f"{path.name} imports {sorted(reaching_up)}"


def test_choice_and_scheduler_do_not_import_each_other():
    assert "speech_router.router.scheduler" not in imports_of(PACKAGE / "router" / "choice.py")
