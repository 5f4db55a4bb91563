"""The fleet page at ``/ui``: static HTML and JavaScript from ``speech_router/ui``, no build step, no CDN.

The files hold no data and no key: the page asks the same API a client would (``/admin/endpoints``,
``/health``, ``/v1/models``, ``/v1/audio/voices``, ``/v1/audio/speech``, ``/synthesize``, the voice upload)
with the key typed into it, sent as ``Authorization: Bearer`` and never in a URL. So the files are open to
anyone (``Access.PAGE``) and the page shows what that key may see. ``server.ui: false`` turns them off (404).
"""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .state import app_state

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
#: the only files served, by name (nothing else under the directory is reachable)
FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
         **{name: "text/javascript; charset=utf-8" for name in ("app.js", "api.js", "fleet.js", "playground.js",
                                                                "voices.js", "player.js")}}
#: the page runs only its own files, talks only to this origin, and plays audio it fetched (blob: URLs)
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "media-src 'self' blob:; img-src 'self' data:; form-action 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


def _file(request: Request, name: str) -> Response:
    if not app_state(request).settings.server.ui or name not in FILES:
        raise HTTPException(404)
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)


async def page(request: Request) -> Response:
    """``GET /ui``: the page."""
    return _file(request, "index.html")


async def asset(request: Request) -> Response:
    """``GET /ui/{name}``: its scripts and style sheet."""
    return _file(request, request.path_params["name"])
