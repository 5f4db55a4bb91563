"""Emulated OpenAI-compatible speech server: `POST /v1/audio/speech` and `GET /v1/models`.

Errors use OpenAI's `{"error": {"message", "type", "param", "code"}}` shape; audio is 24 kHz and always
streamed in a few chunks (raw bytes, or `speech.audio.delta` events with `stream_format: "sse"`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from speech_router.emulator import audio
from speech_router.emulator.control import build_app, state_of
from speech_router.emulator.faults import GARBAGE_BODY, CutResponse
from speech_router.emulator.state import EmulatorState, Knobs, NodeStopped

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAM_FORMATS = ("audio", "sse")
MAX_INPUT_CHARS = 4096
ERROR_MESSAGES = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


@dataclass(kw_only=True)
class OpenAIConfig(Knobs):
    """Knobs for one emulated OpenAI-compatible server; mutate them while it runs."""

    api_key: str | None = None  # when set, `Authorization: Bearer <api_key>` is required
    voices: set[str] | None = None  # None: any voice name is accepted
    models: list[str] = field(default_factory=lambda: ["tts-1", "gpt-4o-mini-tts"])
    error_status: int | None = None  # answer every synthesis with this OpenAI error (429 adds Retry-After)
    retry_after_s: int = 1
    chunks: int = 4  # how many pieces the audio is streamed in


class OpenAIError(Exception):
    """An error to answer in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def create_app(config: OpenAIConfig | None = None) -> Starlette:
    """A Starlette app speaking OpenAI's speech API; `app.state.emulator` holds the request log and counters."""
    config = OpenAIConfig() if config is None else config
    state = EmulatorState(config)
    routes: list[BaseRoute] = [
        Route("/v1/audio/speech", _speech, methods=["POST"]),
        Route("/v1/models", _models, methods=["GET"]),
    ]
    return build_app(state, routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"Invalid URL ({request.method} {request.url.path})"
    return OpenAIError(exc.status_code, message).response()


def _config(state: EmulatorState) -> OpenAIConfig:
    config = state.config
    assert isinstance(config, OpenAIConfig)
    return config


def _check_key(request: Request, config: OpenAIConfig) -> None:
    if config.api_key is None:
        return
    auth = request.headers.get("authorization", "")
    if not auth:
        raise OpenAIError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                          "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    key = auth.removeprefix("Bearer ").strip()
    if key != config.api_key:
        shown = f"{key[:3]}***{key[-4:]}" if len(key) > 7 else "***"
        raise OpenAIError(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                          "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


async def _models(request: Request) -> Response:
    state = state_of(request)
    config = _config(state)
    try:
        _check_key(request, config)
        if config.hang_health:
            await state.pause(None)
    except OpenAIError as exc:
        return exc.response()
    except NodeStopped:
        return Response(status_code=503)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "emulator"} for m in config.models]
    return JSONResponse({"object": "list", "data": data})


def _invalid(param: str, value: Any, allowed: tuple[str, ...] | list[str]) -> OpenAIError:
    quoted = [f"'{a}'" for a in allowed]
    if len(quoted) > 2:
        listed = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    else:
        listed = " and ".join(quoted)
    return OpenAIError(400, f"Invalid value: '{value}'. Supported values are: {listed}.", param=param,
                       code="invalid_value")


def _missing(param: str) -> OpenAIError:
    return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _validate(data: Any, config: OpenAIConfig) -> tuple[str, str, str, float, str]:
    """(input, voice, response_format, speed, stream_format), or OpenAIError as the real API words it."""
    if not isinstance(data, dict):
        raise OpenAIError(400, "We could not parse the JSON body of your request. The body must be a JSON object.")
    if not data.get("model"):
        raise OpenAIError(400, "you must provide a model parameter")
    text, voice = data.get("input"), data.get("voice")
    if text is None:
        raise _missing("input")
    if not isinstance(text, str):
        raise OpenAIError(400, "Invalid type for 'input': expected a string.", param="input", code="invalid_type")
    if len(text) > MAX_INPUT_CHARS:
        raise OpenAIError(400, f"Invalid 'input': string too long. Expected a string with maximum length "
                          f"{MAX_INPUT_CHARS}, but got a string with length {len(text)} instead.",
                          param="input", code="string_above_max_length")
    if voice is None:
        raise _missing("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if not isinstance(voice, str):
        raise OpenAIError(400, "Invalid type for 'voice'.", param="voice", code="invalid_type")
    if config.voices is not None and voice not in config.voices:
        raise _invalid("voice", voice, sorted(config.voices))
    fmt = data.get("response_format", "mp3")
    if fmt not in RESPONSE_FORMATS:
        raise _invalid("response_format", fmt, RESPONSE_FORMATS)
    if not audio.can_encode(fmt):
        raise OpenAIError(400, f"response_format '{fmt}' is not supported by this server.",
                          param="response_format", code="unsupported_value")
    speed = data.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise OpenAIError(400, f"Invalid 'speed': expected a number between 0.25 and 4.0, got {speed!r}.",
                          param="speed", code="invalid_value")
    stream_format = data.get("stream_format", "audio")
    if stream_format not in STREAM_FORMATS:
        raise _invalid("stream_format", stream_format, STREAM_FORMATS)
    return text, voice, fmt, float(speed), stream_format


async def _speech(request: Request) -> Response:
    state = state_of(request)
    config = _config(state)
    await state.record(request)
    state.in_flight += 1
    # The slot and the in-flight count last until the stream ends, so they pass to the body iterator.
    held = AsyncExitStack()
    held.callback(_leave, state)
    try:
        _check_key(request, config)
        try:
            data = await request.json()
        except ValueError:
            raise OpenAIError(400, "We could not parse the JSON body of your request. (HINT: This likely means "
                              "you aren't using your HTTP library correctly.)") from None
        text, voice, fmt, speed, stream_format = _validate(data, config)
        if config.error_status is not None:
            raise _status_error(config.error_status, config.retry_after_s)
        await state.hung()
        await held.enter_async_context(state.slot())
        await state.pause(config.delay_s)  # time to first byte; the per-character part paces the chunks
        if config.fails(text):
            raise _status_error(500, config.retry_after_s)
        body = audio.encode(audio.render(text, voice, audio.OPENAI_RATE, speed), audio.OPENAI_RATE, fmt)
        state.served += 1
        return _stream(state, held.pop_all(), body, fmt, stream_format, len(text))
    except OpenAIError as exc:
        return exc.response()
    except NodeStopped:
        return Response(status_code=503)
    finally:
        await held.aclose()


def _leave(state: EmulatorState) -> None:
    state.in_flight -= 1


def _status_error(status: int, retry_after_s: int) -> OpenAIError:
    message, type_, code = ERROR_MESSAGES.get(status, (f"Emulated error {status}.", "server_error", None))
    headers = {"retry-after": str(retry_after_s)} if status == 429 else None
    return OpenAIError(status, message, type_, code=code, headers=headers)


def _split(body: bytes, n: int) -> list[bytes]:
    n = max(1, min(n, len(body)))
    size = -(-len(body) // n)
    return [body[i : i + size] for i in range(0, len(body), size)]


def _sse(pieces: list[bytes], input_chars: int, total_bytes: int) -> list[bytes]:
    events: list[dict[str, Any]] = [
        {"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()} for p in pieces
    ]
    output_tokens = max(1, total_bytes // 1000)
    usage = {"input_tokens": input_chars, "output_tokens": output_tokens, "total_tokens": input_chars + output_tokens}
    events.append({"type": "speech.audio.done", "usage": usage})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events]


def _stream(state: EmulatorState, held: AsyncExitStack, body: bytes, fmt: str, stream_format: str,
            input_chars: int) -> Response:
    """Chunked audio (or SSE events); `held` is closed when the last chunk is out."""
    config = _config(state)
    media_type = "text/event-stream" if stream_format == "sse" else audio.FORMATS[fmt][0]
    if config.garbage:
        body = GARBAGE_BODY
    pieces = _split(body, config.chunks)
    if stream_format == "sse":
        pieces = _sse(pieces, input_chars, len(body))
    per_piece_s = config.delay_per_char_s * input_chars / len(pieces)

    async def chunks() -> AsyncIterator[bytes]:
        async with held:
            for piece in pieces:
                try:
                    await state.pause(per_piece_s)
                except NodeStopped:
                    return
                yield piece

    if config.truncate:
        return CutResponse(pieces[: max(1, len(pieces) // 2)], media_type, on_done=held.aclose)
    return StreamingResponse(chunks(), media_type=media_type)
