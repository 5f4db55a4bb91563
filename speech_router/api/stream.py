"""``/v1/audio/speech/stream``: the route table's handler for realtime speech (``speech_router.realtime``).

A WebSocket becomes a realtime session; a plain GET gets 426. The session code is imported on first use: it
builds on the API's parts (auth, schemas, errors), so the table cannot import it while they load.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from .errors import openai_error
from .state import scope_state


class RealtimeRoute:
    """The ASGI app of the realtime route."""

    def __repr__(self) -> str:
        return "RealtimeRoute()"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            from ..realtime.route import serve_session

            await serve_session(scope, receive, send, scope_state(scope))
            return
        response = openai_error(426, "This route speaks WebSocket (vllm-omni's streaming speech protocol): connect "
                                     "with a WebSocket client to ws://HOST/v1/audio/speech/stream.",
                                code="websocket_required", headers={"Upgrade": "websocket"})
        await response(scope, receive, send)
