"""The floor for any Python router on uvicorn and aiohttp: a proxy that does nothing else.

`python -m bench._proxy_floor NODE_URL PORT` serves one raw ASGI app on 127.0.0.1:PORT under uvicorn (uvloop,
httptools, as speech-router runs): it reads the request body, POSTs it to NODE_URL + the same path on one kept
aiohttp session (the router's read buffer and no redirects) and streams the answer back as it arrives. No
routing table, auth, validation, scheduling, metrics or logs: whatever the router costs beyond this row is its
own; whatever this row costs, no router on this stack can avoid. `bench.overhead --floor` measures it.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

from speech_router.backends.http import READ_BUFFER_BYTES

_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        if _session is not None:
            await _session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":  # readiness
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), auto_decompress=False,
                                         read_bufsize=READ_BUFFER_BYTES)
    async with _session.post(NODE + scope["path"], data=body, headers={"content-type": "application/json"},
                             allow_redirects=False) as resp:
        headers = [(b"content-type", resp.headers.get("content-type", "audio/wav").encode())]
        if resp.content_length is not None:
            headers.append((b"content-length", str(resp.content_length).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        async for chunk, _ in resp.content.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    NODE = sys.argv[1]
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", loop="uvloop", http="httptools",
                lifespan="on")
