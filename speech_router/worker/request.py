"""index-tts-vllm v2's ``/tts_url`` body -> ``IndexTTS2.infer`` keyword arguments, checked.

``spk_audio_path`` -> ``spk_audio_prompt``; ``emo_control_method`` 1 -> ``emo_audio_prompt`` (``emo_ref_path``)
and ``emo_alpha`` (``emo_weight``), 2 -> ``emo_vector`` (``emo_vec``), 3 -> ``use_emo_text`` and ``emo_text``;
``emo_random`` -> ``use_random``; ``max_text_tokens_per_sentence`` -> ``max_text_tokens_per_segment``.

IndexTTS-2.5 workers take three more fields, passed to ``infer`` as they are: ``lang`` (default: guessed
from the text), ``duration_factor`` (0.5-2.0; speed = 1 / duration_factor) and ``text_normalization``.
An IndexTTS-2 worker ignores ``lang`` and ``text_normalization`` and refuses a ``duration_factor``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from ..errors import RequestInvalid
from ..text.language import request_lang

log = logging.getLogger(__name__)

#: ``infer`` arguments only IndexTTS-2.5 has
V25_KEYS = ("lang", "duration_factor", "text_normalization")
#: IndexTTS-2.5's duration factors (1 / speed): twice as fast to half as fast
DURATION_FACTOR_RANGE = (0.5, 2.0)
EMO_VEC_LEN = 8
EMO_VEC_MAX_SUM = 1.5  # index-tts-vllm api_server_v2.py refuses larger sums


class RequestError(ValueError):
    """The request body is wrong; the worker answers 400 and the router does not retry it."""


def infer_kwargs(body: Any, version: str = "2") -> dict[str, Any]:
    """The worker's ``/tts_url`` body -> ``IndexTTS2.infer`` keyword arguments (raises ``RequestError``)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("'text' is required and must be a non-empty string")
    kwargs: dict[str, Any] = {"spk_audio_prompt": _audio_path(body, "spk_audio_path"), "text": text}
    method = body.get("emo_control_method", 0)
    if isinstance(method, bool) or method not in (0, 1, 2, 3):
        raise RequestError("'emo_control_method' must be 0, 1, 2 or 3")
    if method == 1:
        kwargs["emo_audio_prompt"] = _audio_path(body, "emo_ref_path")
        kwargs["emo_alpha"] = _number(body.get("emo_weight", 1.0), "emo_weight")
    elif method == 2:
        kwargs["emo_vector"] = _emo_vector(body.get("emo_vec"))
    elif method == 3:
        emo_text = body.get("emo_text")
        if emo_text is not None and not isinstance(emo_text, str):
            raise RequestError("'emo_text' must be a string")
        kwargs.update(use_emo_text=True, emo_text=emo_text or None)  # None: the engine reads the emotion from text
    random_emo = body.get("emo_random", False)
    if not isinstance(random_emo, bool):
        raise RequestError("'emo_random' must be true or false")
    if random_emo:
        kwargs["use_random"] = True
    tokens = body.get("max_text_tokens_per_sentence")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise RequestError("'max_text_tokens_per_sentence' must be a positive integer")
        kwargs["max_text_tokens_per_segment"] = tokens
    kwargs.update(_v25_kwargs(body, text, version))
    return kwargs


def _v25_kwargs(body: dict[str, Any], text: str, version: str) -> dict[str, Any]:
    """``lang``, ``duration_factor`` and ``text_normalization`` for a 2.5 engine (checked)."""
    factor = body.get("duration_factor", 1.0)
    if factor != 1.0:
        factor = _number(factor, "duration_factor")
        low, high = DURATION_FACTOR_RANGE
        if version != "2.5":
            raise RequestError("'duration_factor' (speed) needs IndexTTS-2.5; this worker runs IndexTTS-2")
        if not low <= factor <= high:
            raise RequestError(f"'duration_factor' must be between {low:g} and {high:g}")
    if version != "2.5":
        return {}
    lang = body.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise RequestError("'lang' must be a language code such as zh, en, ja, es or yue")
    try:
        out: dict[str, Any] = {"lang": request_lang(lang, text)}
    except RequestInvalid as exc:
        raise RequestError(exc.message) from None
    if factor != 1.0:
        out["duration_factor"] = factor
    normalization = body.get("text_normalization", True)
    if not isinstance(normalization, bool):
        raise RequestError("'text_normalization' must be true or false")
    if not normalization:
        out["text_normalization"] = False
    return out


def _audio_path(body: dict[str, Any], key: str) -> str:
    path = body.get(key)
    if not isinstance(path, str) or not path:
        raise RequestError(f"'{key}' is required and must be a file path on the worker's host")
    if not os.path.isfile(path):
        log.warning("%s %r: no such file", key, path)
        raise RequestError(f"'{key}': no such file on the worker's host")
    return path


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{key}' must be a number")
    return float(value)


def _emo_vector(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != EMO_VEC_LEN:
        raise RequestError(f"'emo_vec' must be a list of {EMO_VEC_LEN} numbers")
    vec = [_number(v, "emo_vec") for v in value]
    if any(v < 0 for v in vec) or sum(vec) > EMO_VEC_MAX_SUM:
        raise RequestError(f"'emo_vec' values must be >= 0 and add up to at most {EMO_VEC_MAX_SUM}")
    return vec
