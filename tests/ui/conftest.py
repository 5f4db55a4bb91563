"""The fleet page's fixtures: a router with keys and a voice store in front of two emulated nodes, and a headless
Chromium (skipped, saying why, where none is installed; ``.ci/run`` installs Debian's)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SharedFleet, shared_fleet
from tests.ui.cdp import Browser, find_browser

ADMIN_KEY = "page-admin-key"
CLIENT_KEY = "page-client-key"
VOICES_KEY = "page-voices-key"
ENV = {"SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedFleet]:
    """Two emulated nodes ("a", "b") behind a router with the admin key, a client key and a voice store."""
    keys = [{"name": "web", "key_env": "PAGE_CLIENT_KEY"},
            {"name": "voices", "key_env": "PAGE_VOICES_KEY", "scopes": ["voices"]}]
    with shared_fleet("a", "b", server={"auth": {"keys": keys}},
                      env={**ENV, "PAGE_CLIENT_KEY": CLIENT_KEY, "PAGE_VOICES_KEY": VOICES_KEY},
                      more={"voice_store": {"directory": str(tmp_path_factory.mktemp("voices"))}}) as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium; .ci/run installs it): the fleet page's "
                    "browser tests are skipped")
    opened = Browser(binary)
    try:
        yield opened
    finally:
        opened.close()


def save_screenshot(png: bytes, name: str) -> None:
    """With ``SPEECH_ROUTER_SCREENSHOTS=DIR`` (e.g. ``docs``), keep the page's picture there for the docs."""
    target = os.environ.get("SPEECH_ROUTER_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / name).write_bytes(png)
