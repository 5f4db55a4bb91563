"""Public voice names -> per-backend parameters, only ever through the config.

A client names a voice; it never sends a file path. Voices listed under ``voices`` resolve to their
parameters, then voices uploaded with ``POST /v1/audio/voices`` (``speech_router.voices``: one
namespace, YAML first); with ``voice_dir`` set (the seed's ``TTS_VOICE_DIR``), any other name that is a plain
file name resolves to ``<voice_dir>/<name><extension>`` on the nodes.
"""

from __future__ import annotations

import re
from typing import Any

from ..config.models import Settings
from ..errors import RequestInvalid
from .params import uploaded_params

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # fullmatch: "$" would accept a trailing newline


def resolve_voice(settings: Settings, name: str, *, param: str = "voice") -> dict[str, Any]:
    """The configured parameters of voice ``name``; ``RequestInvalid`` naming ``param`` otherwise."""
    voice = settings.voices.get(name)
    if voice is not None:
        return voice.params()
    uploaded = uploaded_params(settings, name)
    if uploaded is not None:
        return uploaded
    if settings.voice_dir is not None and _PLAIN_NAME.fullmatch(name):
        d = settings.voice_dir
        return {"spk_audio_path": f"{d.path.rstrip('/')}/{name}{d.extension}"}
    known = ", ".join(sorted(settings.voices)) or "none configured"
    if settings.voice_dir is not None:  # any plain name works: say so, not only the (maybe empty) list
        d = settings.voice_dir
        raise RequestInvalid(f"Voice {name!r} not found. A voice is a configured one ({known}) or a plain name of "
                             f"letters, digits, - and _ for the file {d.path.rstrip('/')}/NAME{d.extension} on the "
                             "nodes, such as 'alloy'.", param=param, code="voice_not_found")
    raise RequestInvalid(f"Voice {name!r} not found. Available voices: {known}.", param=param,
                         code="voice_not_found")
