"""A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket), for the fleet page's tests.

Only what the tests use: open a tab, evaluate JavaScript (awaiting promises), wait for a condition, set a file
input, record the URLs the page requested, take a screenshot. The browser runs with a fresh profile and with
its background networking off, talks only to 127.0.0.1, and is stopped (and its profile removed) by ``close``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: where a browser is looked for, in order (``SPEECH_ROUTER_BROWSER`` first)
BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--mute-audio", "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
         "--window-size=1280,900")
START_TIMEOUT_S = 30.0


def find_browser() -> str | None:
    given = os.environ.get("SPEECH_ROUTER_BROWSER")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


class BrowserError(Exception):
    """The page threw, or a condition never came true."""


class Browser:
    """One headless Chromium process and one tab in it."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="speech-router-browser-")
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.requested: list[str] = []  # every URL the tab asked for (Network.requestWillBeSent)
        self._stack = contextlib.ExitStack()
        try:
            # entered as a context manager (websockets >= 17.1 warns otherwise); closed by ``close``
            self.ws: ClientConnection = self._stack.enter_context(
                connect(self._endpoint(), max_size=64 * 1024 * 1024, open_timeout=10))
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Network", "DOM"):
                self.send(f"{domain}.enable", session=True)
        except BaseException:
            self.close()
            raise

    def _endpoint(self) -> str:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"the browser exited with {self.process.returncode}")
            if port_file.is_file() and len(lines := port_file.read_text().split()) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError("the browser did not open its DevTools port")

    def send(self, method: str, *, session: bool = False, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One DevTools command; returns its result (events that arrive meanwhile are kept)."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if reply.get("method") == "Network.requestWillBeSent":
                self.requested.append(reply["params"]["request"]["url"])
            self._events.append(reply)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression in the tab (a promise is awaited)."""
        result = self.send("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll until ``expression`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not true within {timeout:g} s: {expression}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def set_files(self, selector: str, *paths: Path) -> None:
        root = self.send("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(p) for p in paths])

    def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=1280, height=int(height),
                  deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        self.send("Emulation.clearDeviceMetricsOverride", session=True)
        return base64.b64decode(data)

    def close(self) -> None:
        """Stop the browser (politely, then for sure) and remove its profile."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
            except Exception:  # noqa: BLE001 - it may be gone already
                pass
            self._stack.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
