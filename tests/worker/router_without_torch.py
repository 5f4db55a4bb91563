"""``python -m tests.worker.router_without_torch CONFIG.json``: serve a router, speak once, report torch imports.

Run in its own process by ``test_router.py``. An import spy on ``sys.meta_path`` records every
attempt to import torch, including ones that fail or are caught, so a backend doing
``try: import torch`` would be caught too. ``SELF_CHECK=1`` attempts one itself, to prove the spy works.
Prints one JSON line: the attempts, whether torch is in ``sys.modules``, and what the synthesis gave.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import time
import urllib.request
from typing import Any

ATTEMPTS: list[str] = []


class ImportSpy(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            ATTEMPTS.append(name)  # and return None: the real finders decide


def main(config_path: str) -> dict[str, Any]:
    sys.meta_path.insert(0, ImportSpy())
    if os.environ.get("SELF_CHECK") == "1":
        try:
            import torch  # noqa: F401
        except ImportError:
            pass

    from speech_router.api.app import create_app
    from speech_router.config.loader import settings_from_dict
    from speech_router.emulator.serve import ServerHandle
    from speech_router.plugins.manager import backend_registry
    from tests.worker.conftest import plugin_manager

    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    pm = plugin_manager()
    handle = ServerHandle(create_app(settings_from_dict(config, registry=backend_registry(pm), env={}), pm=pm))
    handle.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(handle.url + "/health", timeout=5) as resp:
                    if json.load(resp)["status"] == "healthy":
                        break
            except OSError:
                pass
            time.sleep(0.05)
        body = json.dumps({"model": "indextts2", "voice": "alloy", "input": "Hello. World.",
                           "response_format": "wav"}).encode()
        req = urllib.request.Request(handle.url + "/v1/audio/speech", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            audio = resp.read()
            served_by = resp.headers.get("x-speech-router-endpoint")
    finally:
        handle.stop()
    return {"attempts": ATTEMPTS, "torch_in_modules": "torch" in sys.modules, "bytes": len(audio),
            "served_by": served_by, "backend_loaded": "speech_router.backends.indextts2_local" in sys.modules}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
