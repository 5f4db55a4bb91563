"""Tokens a cut must never go through: numbers, dates, URLs, e-mail addresses, abbreviations, list markers.

A TTS engine given "3." and "14" reads two numbers, and "Dr." with "Smith" in another segment gets a pause
and a falling tone after "Dr.". Each token found here is marked; the period, comma or colon inside one is
neither a sentence end nor a clause mark.
"""

from __future__ import annotations

import re

#: a title stays with the name after it: "Dr. Smith", "Mr. Lee"
TITLES = frozenset(
    "Mr Mrs Ms Mx Dr Prof Rev Hon St Mt Gen Col Capt Lt Sgt Gov Sen Rep Pres Supt Messrs Mme Mlle".split()
)
#: abbreviations that announce a number stay with it: "No. 5", "Fig. 3", "Jan. 12"
BEFORE_NUMBERS = frozenset(
    "No no Nos nos Nr Fig fig Figs Vol vol Vols Ch Chap Sec Art Eq Ex Op pp p "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split()
)
#: abbreviations that never end a sentence, whatever follows them (compared in lower case)
NEVER_FINAL = frozenset("e.g i.e cf vs viz approx ca incl esp resp".split())

_NUMBER = r"\d+(?:[.,:/\-．，：]\d+)*"
#: a number with the units written onto it: 3.14, 1,000, 10:30, 2026-11-24, 2026年11月24日, 10点30分
_NUMERIC = re.compile(rf"{_NUMBER}(?:\s?[年月日号点时時分秒](?:\s?{_NUMBER})?)*")
_URL = re.compile(r"(?:(?:https?|ftp|wss?|file)://|www\.)[^\s<>\"“”‘’「」『』（），。！？；：、【】《》]+", re.IGNORECASE)
#: trailing marks that end the sentence around a URL rather than belong to it
_URL_TAIL = ".,;:!?'\""
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
#: a word with a period after it, or a dotted run like "e.g." and "U.S.": the candidates for abbreviations
_DOTTED = re.compile(r"[A-Za-z]+(?:\.[A-Za-z]+)*\.")
_INITIALS = re.compile(r"[A-Z](?:\.[A-Z])*")
_NAME_AFTER = re.compile(r"\s+[A-Z][A-Za-z'’\-]*")
_NUMBER_AFTER = re.compile(rf"\s?{_NUMBER}")
_CAPITAL_AFTER = re.compile(r"\s+[A-Z]")
#: a list marker at a block's start, kept with the first character of its item: "1. Install", "- item", "（2）"
_LIST_MARKER = re.compile(r"(?:[-*•·‣◦]|(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,4})[.)．、]|[（(]\d{1,3}[)）])\s?\S")


def protected(text: str) -> bytearray:
    """``blocked[i]`` is 1 when a cut just before ``text[i]`` would split a token (length ``len(text) + 1``).

    An end mark at ``text[i]`` inside a token also has ``blocked[i]`` set, since no token starts with one.
    """
    blocked = bytearray(len(text) + 1)
    for match in _NUMERIC.finditer(text):
        _block(blocked, *match.span())
    if "." in text:
        for match in _DOTTED.finditer(text):
            end = _abbreviation_end(text, match)
            if end:
                _block(blocked, match.start(), end)
    if "@" in text:
        for match in _EMAIL.finditer(text):
            _block(blocked, *match.span())
    if "://" in text or "www." in text.lower():
        for match in _URL.finditer(text):
            url = match.group()
            while url[-1] in _URL_TAIL or (url[-1] == ")" and url.count("(") < url.count(")")):
                url = url[:-1]
            _block(blocked, match.start(), match.start() + len(url))
    marker = _LIST_MARKER.match(text)
    if marker:
        _block(blocked, *marker.span())
    return blocked


def _abbreviation_end(text: str, match: re.Match[str]) -> int:
    """Where the abbreviation at ``match`` ends with what must stay with it, or 0 when it is none."""
    start, end = match.span()
    if start and text[start - 1].isalpha():  # the tail of a longer word: "xDr."
        return 0
    word = match.group()[:-1]
    if word in TITLES:
        name = _NAME_AFTER.match(text, end)
        return name.end() if name else end
    if word in BEFORE_NUMBERS:
        number = _NUMBER_AFTER.match(text, end)
        return number.end() if number else 0
    if word.lower() in NEVER_FINAL:
        return end
    if _INITIALS.fullmatch(word) and _CAPITAL_AFTER.match(text, end):  # "J. K. Rowling", "the U.S. Army"
        return end + 2 if text[end] == " " else end
    return 0


def _block(blocked: bytearray, start: int, end: int) -> None:
    if end - start > 1:
        blocked[start + 1:end] = b"\x01" * (end - start - 1)
