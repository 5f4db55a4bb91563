"""Run an ASGI app on a real uvicorn server in a background thread (httpx's tests/conftest.py pattern).

`stop()` behaves like the node's process dying: the listening socket closes (new connections are
refused), open connections are closed under any request in flight, and hung emulator requests are
released so the thread ends promptly. `start()` again brings the node back on the same port.

A stop costs no fixed wait: the server's loop wakes at once (uvicorn's ticks every 0.1 s), and requests
still running are cancelled at once rather than given a grace period and a pause for connections to close
(``stop()`` already cut them), as a killed process's would be. The test suite stops hundreds of servers:
0.2 s each was over a minute of every run (issue #22).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp

START_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 10.0
#: how often the server's loop looks at its state when nothing wakes it (uvicorn's tick: the Date header)
TICK_S = 0.1


class _ThreadServer(uvicorn.Server):
    """uvicorn.Server that leaves signals to the main thread and remembers its event loop."""

    loop: asyncio.AbstractEventLoop | None = None

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        await super().startup(sockets=sockets)

    async def main_loop(self) -> None:
        """uvicorn's loop, woken by ``stop()`` at once rather than at its next tick."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self.wake.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Go down as a killed process does: requests still running are cancelled (their connections are
        already cut), then the app's lifespan shutdown runs, as it would on SIGTERM."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        tasks = list(self.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=JOIN_TIMEOUT_S)
        if not self.force_exit:
            await self.lifespan.shutdown()


class ServerHandle:
    """One server in a thread: `.url`, `.port`, `.start()`, `.stop()`, `.restart()`."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0,
                 options: dict[str, Any] | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port  # 0 until the first start picks a free port; then kept for restarts
        self.options = options or {}  # more uvicorn.Config arguments (the router's edge limits)
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, running={self.running})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Serve in a daemon thread and return once the socket accepts connections."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        options = {"ws": "auto" if _has_websocket(self.app) else "none", **self.options}
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            lifespan="on",
            log_level="warning",
            **options,
        )
        server = _ThreadServer(config)
        thread = threading.Thread(target=server.run, name=f"emulator:{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(JOIN_TIMEOUT_S)
                raise RuntimeError(f"server for {self.host}:{self.port} did not start (port in use?)")
            time.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Go down like a killed process; hanging requests do not hold it up. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True  # before the wake-up below, so the loop sees it when it wakes
        if server.loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have closed already
                server.loop.call_soon_threadsafe(self._drop_everything, server)
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"server at {self.url} did not stop")

    def restart(self) -> None:
        """Stop, then start again on the same port (a node that went down and came back)."""
        self.stop()
        self.start()

    def __enter__(self) -> ServerHandle:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _drop_everything(self, server: _ThreadServer) -> None:
        # Runs on the server's loop: refuse new connections, cut open ones, wake hung requests.
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        emulator = getattr(getattr(self.app, "state", None), "emulator", None)
        release = getattr(emulator, "release", None)
        if callable(release):
            release()
        server.wake.set()


def _has_websocket(app: ASGIApp) -> bool:
    """Whether the app serves a WebSocket route (the router's realtime route, a vllm-omni node's): only then does
    uvicorn take upgrades."""
    return any(isinstance(route, WebSocketRoute) for route in getattr(app, "routes", ()))


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[ServerHandle]:
    """Serve `app` for the duration of the block; port 0 picks a free port (see `.port`, `.url`)."""
    handle = ServerHandle(app, host, port)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@contextlib.contextmanager
def serve_fleet(apps: Sequence[ASGIApp], host: str = "127.0.0.1", base_port: int = 0) -> Iterator[list[ServerHandle]]:
    """Serve several apps: on consecutive ports from `base_port`, or on free ports when it is 0."""
    with contextlib.ExitStack() as stack:
        handles = []
        for i, app in enumerate(apps):
            port = base_port + i if base_port else 0
            handles.append(stack.enter_context(serve_in_thread(app, host, port)))
        yield handles
