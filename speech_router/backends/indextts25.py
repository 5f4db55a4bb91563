"""What IndexTTS-2.5 adds over IndexTTS-2, shared by the backends that can serve it (``vllm-omni``,
``indextts2-local``): a language for every request and native speed.

2.5's ``infer`` needs ``lang`` (zh, en, ja, es, yue, ...). OpenAI's speech API has no language field,
so for requests that do not name one the language is guessed from the text: ``ja`` when the text has
kana, ``zh`` when CJK characters are at least as many as the words in other scripts, else ``en``. A client
that knows better says so on the native route (``lang``, or ``language``).

Speed is native on 2.5: ``duration_factor = 1 / speed``, allowed 0.5-2.0 (vllm-omni answers 400
outside it, the local engine would stretch the audio past what the model was trained for).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator

from ..errors import RequestInvalid

Version = Literal["2", "2.5"]


def _version_text(value: object) -> object:
    """YAML reads ``version: 2.5`` as a number; accept it as the string it means (2 and 2.0 are "2")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "2" if value == 2 else f"{value:g}"
    return value


#: a pool option naming the IndexTTS version: "2", "2.5" (numbers too), or "auto"
VersionOption = Annotated[Literal["auto", "2", "2.5"], BeforeValidator(_version_text)]
#: speed (``1 / duration_factor``) IndexTTS-2.5 accepts
SPEED_RANGE_25 = (0.5, 2.0)
#: a language code or name as a client may send it (``zh``, ``EN``, ``yue``, ``zh/en``, ``mandarin``)
_LANG = re.compile(r"[A-Za-z][A-Za-z/_-]{0,23}")


def guess_lang(text: str) -> str:
    """``ja`` when the text has kana; ``zh`` when its CJK characters are at least as many as its words in
    other scripts (a Chinese character carries about what a word does); else ``en``."""
    cjk = kana = words = 0
    in_word = False
    for ch in text:
        code = ord(ch)
        is_kana = 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF
        is_cjk = 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF
        kana += is_kana
        cjk += is_cjk
        letter = ch.isalpha() and not (is_kana or is_cjk)
        words += letter and not in_word
        in_word = letter
    if cjk + kana == 0 or cjk + kana < words:
        return "en"
    return "ja" if kana else "zh"


def request_lang(lang: str | None, text: str, *, param: str = "lang") -> str:
    """The language to send: the client's (checked, lower-cased) or one guessed from ``text``."""
    if lang is None:
        return guess_lang(text)
    value = lang.strip()
    if not _LANG.fullmatch(value):
        raise RequestInvalid(f"Invalid '{param}': {lang[:32]!r} is not a language code (zh, en, ja, es, yue, ...).",
                             param=param)
    return value.lower()


def duration_factor(speed: float, *, backend: str) -> float:
    """IndexTTS-2.5's ``duration_factor`` for ``speed``; a 400 naming ``speed`` outside 0.5-2.0."""
    low, high = SPEED_RANGE_25
    if not low <= speed <= high:
        raise RequestInvalid(f"Invalid 'speed': IndexTTS-2.5 ({backend}) speaks at {low:g} to {high:g} times normal "
                             f"speed, got {speed:g}.", param="speed", code="unsupported_value")
    return 1.0 / speed
