"""A job's audio file as a response, with byte ranges (RFC 9110): a player can seek, a download can resume.

One range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) gets 206 with ``Content-Range``; a range past the end
gets 416 in the route's error shape; several ranges, or a header that does not parse, get the whole file
(the RFC lets a server ignore Range). ``If-Range`` with the file's ``ETag`` keeps the range; any other value
gets the whole file. The file is opened before the answer starts, so an expiry that deletes it meanwhile does
not cut the download.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .errors import openai_error

CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) byte of one satisfiable range; None: serve it all; False: not satisfiable (416)."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n and size else False
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid: ignored
    return (start, end) if start < size else False


def file_response(request: Request, path: Path, content_type: str, etag: str) -> Response:
    """The file, whole or the range asked for."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the body's generator
    size = os.fstat(handle.fileno()).st_size
    headers = {"accept-ranges": "bytes", "etag": etag}
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    chosen = parse_range(wanted, size) if if_range is None or if_range == etag else None
    if chosen is False and wanted is not None:  # (only a header can be unsatisfiable)
        handle.close()
        return openai_error(416, f"Range {wanted[:64]!r} is outside the file's {size} bytes.", param="Range",
                            code="range_not_satisfiable", headers={"content-range": f"bytes */{size}"})
    if chosen is None or isinstance(chosen, bool):
        start, end, status = 0, size - 1, 200
    else:
        (start, end), status = chosen, 206
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    headers["content-length"] = str(max(0, end - start + 1))
    body = _read(handle, start, end + 1) if request.method != "HEAD" else _nothing(handle)
    return StreamingResponse(body, status_code=status, media_type=content_type, headers=headers)


async def _read(handle: BinaryIO, start: int, stop: int) -> AsyncIterator[bytes]:
    try:
        await asyncio.to_thread(handle.seek, start)
        left = stop - start
        while left > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    finally:
        handle.close()


async def _nothing(handle: BinaryIO) -> AsyncIterator[bytes]:
    handle.close()
    return
    yield b""  # an async generator that yields nothing
