"""Which espeak voice reads which part of a text: the embedded engine speaks the language of the text.

An espeak voice reads one language: ``en-us`` says "Chinese letter" for every Chinese character. So a text is
cut where its script changes (``text.language.language_runs``) and each run is read by a voice of its
language. The rule for a configured voice (the voice's ``espeak`` key, else the pool's ``default_voice``):

- runs in the voice's own language are read by that voice, exactly as configured (``yue`` reads Chinese as
  Cantonese; ``en-gb+m2`` reads English);
- runs in another language are read by that language's voice (``LANGUAGE_VOICES``), keeping the configured
  variant, so ``en-us+f3`` reads Chinese as ``cmn+f3``: the same character, in the right language;
- a client's ``lang`` (native route) names the language of the whole text instead of guessing it;
- the pool's ``detect_language: false`` turns all this off: the configured voice reads everything.
"""

from __future__ import annotations

from ..text.language import OTHER, language_runs

#: the voice for a run in each language when the configured voice speaks another one
LANGUAGE_VOICES = {"zh": "cmn", "ja": "ja", "ko": "ko", OTHER: "en-us"}

#: espeak voice names (before any ``+variant``) that read Chinese characters as Chinese
_CHINESE_VOICES = ("cmn", "zh", "yue", "hak", "sit/")
#: a client's ``lang`` as a language family of ``language_runs``
_LANG_FAMILIES = {"zh": "zh", "cmn": "zh", "yue": "zh", "mandarin": "zh", "cantonese": "zh", "ja": "ja",
                  "japanese": "ja", "ko": "ko", "korean": "ko"}


def voice_language(voice: str) -> str:
    """The family of text an espeak voice reads: ``zh``, ``ja``, ``ko`` or ``OTHER`` (Latin, Cyrillic...)."""
    name = voice.partition("+")[0].strip().lower()
    if name.startswith(_CHINESE_VOICES):
        return "zh"
    if name in ("ja", "jpx/ja"):
        return "ja"
    if name in ("ko", "ko-kr"):
        return "ko"
    return OTHER


def voice_for(language: str, configured: str) -> str:
    """The voice that reads a run in ``language`` for a request whose voice is ``configured``."""
    if voice_language(configured) == language:
        return configured
    _, plus, variant = configured.partition("+")
    return LANGUAGE_VOICES[language] + plus + variant


def plan(text: str, configured: str, *, lang: str | None = None, detect: bool = True) -> list[tuple[str, str]]:
    """``[(voice, piece), ...]``: which voice reads which piece of ``text``, in order; neighbours that share a
    voice are one piece, so a one-language text is one call to espeak, as before."""
    if not detect:
        return [(configured, text)]
    if lang is not None and "/" not in lang:  # "zh/en": mixed, as guessing finds it
        runs = [(_LANG_FAMILIES.get(lang.lower().split("-")[0], OTHER), text)]
    else:
        runs = language_runs(text)
    parts: list[tuple[str, str]] = []
    for language, piece in runs:
        voice = voice_for(language, configured)
        if parts and parts[-1][0] == voice:
            parts[-1] = (voice, parts[-1][1] + piece)
        else:
            parts.append((voice, piece))
    return parts
