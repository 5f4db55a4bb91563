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


def _is_kana(code: int) -> bool:
    return 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF


def _is_han(code: int) -> bool:
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF
            or 0x20000 <= code <= 0x3134F)


def _is_hangul(code: int) -> bool:
    return 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F


def guess_lang(text: str) -> str:
    """``ja`` when the text has kana; ``zh`` when its CJK characters are at least as many as its words in
    other scripts (a Chinese character carries about what a word does); else ``en``."""
    cjk = kana = words = 0
    in_word = False
    for ch in text:
        code = ord(ch)
        is_kana = _is_kana(code)
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


#: what ``language_runs`` calls text in any other script (Latin, Cyrillic...): the voice's own language
OTHER = "other"


def _script(ch: str, kana_in_text: bool) -> str | None:
    """The language a character's script says (``zh``, ``ja``, ``ko``, ``other``); None for digits,
    punctuation and spaces, which belong to the run around them."""
    code = ord(ch)
    if _is_kana(code):
        return "ja"
    if _is_han(code):
        return "ja" if kana_in_text else "zh"  # kanji among kana are Japanese
    if _is_hangul(code):
        return "ko"
    return OTHER if ch.isalpha() else None


def language_runs(text: str) -> list[tuple[str, str]]:
    """``text`` cut where its script changes: ``[(lang, piece), ...]`` in order, ``lang`` one of ``zh``, ``ja``,
    ``ko`` or ``OTHER``; digits, punctuation and spaces stay with the run they follow (or the first run).
    ``"Hello 你好, world"`` is ``[("other", "Hello "), ("zh", "你好, "), ("other", "world")]``."""
    kana = any(_is_kana(ord(ch)) for ch in text)
    runs: list[tuple[str, str]] = []
    lang: str | None = None
    start = 0
    for i, ch in enumerate(text):
        script = _script(ch, kana)
        if script is None or script == lang:
            continue
        if lang is not None:
            runs.append((lang, text[start:i]))
            start = i
        lang = script
    runs.append((lang or OTHER, text[start:]))
    return runs
