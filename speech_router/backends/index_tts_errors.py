"""Which of an index-tts-vllm node's HTTP 500s are the client's mistake.

``api_server_v2.py`` answers *every* failure as HTTP 500 ``{"status": "error", "error": "<traceback>"}``,
client mistakes included. Counting those against the node would let one client eject a healthy fleet,
so the traceback's last line is read (never shown to the client) and mapped:

| node's error | what the client sees | another endpoint? |
|---|---|---|
| ``FileNotFoundError`` for the speaker or emotion reference | 400, ``voice`` / ``emotion``: the reference audio was not found on the endpoint | once: files may exist on some nodes only |
| ``IsADirectoryError``, ``PermissionError``, ``LibsndfileError``, ``NoBackendError`` on a reference | 400: the reference audio could not be read | once |
| ``KeyError: 'field'`` (a field the node requires) | 400 naming the field | no |
| the emotion vector check (``情感向量之和不能超过1.5``, an ``AssertionError`` about it) | 400, ``emotion``: the vector's sum is over 1.5 | no |
| a ``ValueError`` about the text | 400, ``input``: the model refuses this text | no |
| anything else (CUDA out of memory, model not loaded, ...) | the node's failure: retried elsewhere, counted | yes |

The client's message names the problem and the endpoint, never a node path it did not send itself.

The node's message quotes the path as Python's ``repr`` does (``"it's"``, a tab as ``'\\t'``, a zero-width
space as ``'\\u200b'``), so a path is recognised by its ``repr`` or by the quoted literal read back
(``ast.literal_eval``), never by a pattern that breaks on the characters a client chose: a missing file is
the client's whatever its name holds.
"""

from __future__ import annotations

import ast
import json
import re

from ..errors import BackendRejected
from ..types import SynthesisRequest

EMO_VEC_SUM_ERROR = "情感向量之和不能超过1.5"
_LAST_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception))(?::\s*(?P<message>.*))?$")
#: a Python string literal as ``repr`` writes one: quoted with ' or ", backslash escapes inside
_LITERAL = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')
_UNREADABLE = ("IsADirectoryError", "PermissionError", "LibsndfileError", "NoBackendError")


def node_error_text(body: str) -> str:
    """The node's error string from its JSON body (the body itself when it is not that shape)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else body


def last_exception(text: str) -> tuple[str, str]:
    """(exception type without module, message) of a Python traceback's last line; ("", text) otherwise."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "", ""
    match = _LAST_LINE.match(lines[-1])
    if match is None:
        return "", lines[-1]
    return match["type"].rsplit(".", 1)[-1], (match["message"] or "").strip()


def client_mistake(status: int, body: str, request: SynthesisRequest, endpoint: str) -> BackendRejected | None:
    """The ``BackendRejected`` a node's 500 stands for when it shows a client mistake, else None."""
    if status != 500:
        return None
    text = node_error_text(body)
    kind, message = last_exception(text)
    reject = _reference_problem(kind, message, request, endpoint)
    if reject is not None:
        return reject
    if EMO_VEC_SUM_ERROR in text or (kind == "AssertionError" and "emo" in message.lower()):
        return BackendRejected("the emotion vector's values must sum to at most 1.5", endpoint=endpoint,
                               detail=text, status=status, param=_field(request, "emotion", "emo_vec"))
    if kind == "KeyError":
        field = message.strip("'\"")
        return BackendRejected(f"endpoint {endpoint} needs field {field!r}, which the request did not give",
                               endpoint=endpoint, detail=text, status=status, param=field or None)
    if kind == "ValueError" and "text" in message.lower():
        return BackendRejected(f"the model on endpoint {endpoint} refused this text", endpoint=endpoint,
                               detail=text, status=status, param=_field(request, "input", "text"))
    return None


def _reference_problem(kind: str, message: str, request: SynthesisRequest, endpoint: str) -> BackendRejected | None:
    if kind != "FileNotFoundError" and kind not in _UNREADABLE:
        return None
    quoted = quoted_strings(message)
    found = next(((path, which, param) for path, which, param in _references(request)
                  if path in quoted or repr(path) in message), None)
    if found is None:
        return None  # not a reference the request named: a problem of the node itself
    _, which, param = found
    what = "was not found on" if kind == "FileNotFoundError" else "could not be read by"
    return BackendRejected(f"the {which} {what} endpoint {endpoint}", endpoint=endpoint, detail=message,
                           status=500, param=param, try_elsewhere=True)


def quoted_strings(message: str) -> set[str]:
    """The string literals in a Python error message, read back as the strings they stand for."""
    found = set()
    for match in _LITERAL.finditer(message):
        try:
            value = ast.literal_eval(match[0])
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            found.add(value)
    return found


def _references(request: SynthesisRequest) -> list[tuple[str, str, str]]:
    """The request's reference paths: (path, what it is in words the client knows, the field to name)."""
    body = request.passthrough
    if body is not None:  # /tts_url: the client sent the paths itself
        named = [(body.get(key), key) for key in ("spk_audio_path", "emo_ref_path", "audio_path")]
        paths = body.get("audio_paths")
        named += [(p, "audio_paths") for p in paths] if isinstance(paths, list) else []
        return [(path, f"reference audio {path!r}", key) for path, key in named if isinstance(path, str)]
    found = []
    spk = request.voice_params.get("spk_audio_path")
    if isinstance(spk, str):
        found.append((spk, f"reference audio of voice {request.voice!r}", "voice"))
    if isinstance(request.emotion.ref_path, str):
        found.append((request.emotion.ref_path, "emotion reference audio", "emotion"))
    return found


def _field(request: SynthesisRequest, api_name: str, node_name: str) -> str:
    return node_name if request.passthrough is not None else api_name
