"""docs/auth.md states the defaults the code has."""

from __future__ import annotations

import re
from pathlib import Path

from speech_router.config.models import AuthConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "auth.md"


def test_the_default_open_paths_are_the_ones_the_router_leaves_open():
    text = DOC.read_text(encoding="utf-8").replace("\n", " ")
    listed = re.search(r"`open_paths` \(default ([^)]*)\)", text)
    assert listed, "docs/auth.md gives open_paths' default"
    assert re.findall(r"`([^`]+)`", listed.group(1)) == AuthConfig().open_paths
