"""The language of a text, for TTS models that need one per request (IndexTTS-2.5's ``lang``).

OpenAI's speech API has no language field, so for requests that do not name one the language is
guessed from the text: ``ja`` when it has kana, ``zh`` when its CJK characters are at least as many as
its words in other scripts (a Chinese character carries about what a word does), else ``en``. A client
that knows better says so on the native route (``lang``, or ``language``).
"""

from __future__ import annotations

import re

from ..errors import RequestInvalid

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
