"""A small HTTP/1.1 server on asyncio streams, for the fleet emulator: cheap enough not to be the bottleneck.

It reads a request (Content-Length or chunked body), calls ``handler(Request) -> Reply | None``, and writes
the reply with keep-alive. ``stop()`` behaves like a killed process: the listening socket closes (new
connections are refused) and every open connection is aborted (a reset under any request in flight).
``start()`` listens again on the same port. Only what benchmarks need; not a general web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: resolves when the client closes its side or the server stops (for requests that never answer)
    gone: Callable[[], Awaitable[None]]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(data).encode())


#: returns the reply, or None to close the connection without answering (a request that hung)
Handler = Callable[[Request], Awaitable["Reply | None"]]


class MiniServer:
    """One listening port: ``await start()``, ``await stop()``; ``.port`` is kept across restarts."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 extra_headers: list[tuple[str, str]] | None = None) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.extra = [f"{k}: {v}" for k, v in extra_headers or []]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        return f"MiniServer(host={self.host!r}, port={self.port}, listening={self.listening})"

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self.port, reuse_address=True,
                                                  backlog=1024, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and reset every open connection, like a process that died."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._stopped.set()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):  # requests in progress die with the process
            task.cancel()
        self._writers.clear()
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        stopped = self._stopped

        async def gone() -> None:
            # The client's EOF (or a reset) or the server stopping, whichever comes first.
            eof = asyncio.ensure_future(reader.read(1))
            stop = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({eof, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (eof, stop):
                    task.cancel()

        try:
            while not stopped.is_set():
                request, keep_alive = await _read_request(reader, gone)
                if request is None:
                    return
                try:
                    reply = await self.handler(request)
                except Exception as exc:  # noqa: BLE001 - a handler bug answers 500, it does not kill the server
                    reply = Reply.json({"status": "error", "error": repr(exc)}, 500)
                if reply is None or stopped.is_set() or writer.is_closing():
                    return
                lines = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}",
                         f"content-type: {reply.content_type}", f"content-length: {len(reply.body)}",
                         *self.extra, *(f"{k}: {v}" for k, v in reply.headers)]
                if not keep_alive:
                    lines.append("connection: close")
                head = "\r\n".join(lines) + "\r\n\r\n"
                writer.write(head.encode("latin-1"))
                writer.write(reply.body)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        except asyncio.CancelledError:  # stop(): the connection is already reset
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()


async def _read_request(reader: asyncio.StreamReader,
                        gone: Callable[[], Awaitable[None]]) -> tuple[Request | None, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None, False
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, target.split("?", 1)[0], headers, body, gone), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY:
            raise ValueError("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
