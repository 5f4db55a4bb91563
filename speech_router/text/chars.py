"""Character classes the segmenter reasons with: which marks end a sentence or a clause, which close one.

Chinese and Japanese are written without spaces, so "wide" characters (ideographs, kana, CJK and full-width
punctuation) decide where whitespace is noise and where a cut between two characters is harmless.
"""

from __future__ import annotations

import re

#: end a sentence wherever they stand (Chinese usage: 。！？； and their full-width cousins)
FULL_ENDERS = "。！？；．｡"
#: end a sentence only before a space, a line end or a wide character, and not before a lowercase word
SOFT_ENDERS = ".!?…‼⁇⁈⁉"
ENDERS = FULL_ENDERS + SOFT_ENDERS
#: stay with the sentence or clause they close: `他说："好。"`, `He said "yes." Then`, `(see above.)`
CLOSERS = "\"'”’」』）)］]｝}》〉】〗〕»›"
#: never end a piece: a cut right after one would leave it dangling
OPENERS = "\"'“‘「『（(［[｛{《〈【〖〔«‹"
#: where an overlong sentence may be cut when it has no sentence end within the limit
CLAUSE_MARKS = "，、,;；：:—"

_WIDE_RANGES = (
    (0x2E80, 0x2FFF),  # CJK radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation: 。、「」《》【】
    (0x3040, 0x30FF),  # kana
    (0x3100, 0x312F),  # bopomofo
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # full-width forms: ！？，；：（）
    (0x20000, 0x3134F),  # CJK extensions B..G
)


#: a character class of the wide characters, for regular expressions
WIDE_CLASS = "[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in _WIDE_RANGES) + "]"


def is_wide(char: str) -> bool:
    """True for characters of scripts written without spaces (Hangul is not: Korean separates words)."""
    code = ord(char)
    if code < 0x2E80:
        return False
    return any(low <= code <= high for low, high in _WIDE_RANGES)


def gap(left: str, right: str) -> str:
    """What whitespace between these two characters becomes: nothing between wide ones, else one space."""
    return "" if is_wide(left) and is_wide(right) else " "


_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def speakable(text: str) -> bool:
    """Whether a TTS engine would say anything for this text (a letter, an ideograph or a digit)."""
    return _LETTER_OR_DIGIT.search(text) is not None
