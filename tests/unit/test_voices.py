"""Voice names: what an unknown one's message tells the client in each config mode."""

from __future__ import annotations

import pytest

from speech_router.config.loader import load_settings
from speech_router.errors import RequestInvalid
from speech_router.voices.resolve import resolve_voice


def test_in_tts_remote_url_mode_an_unknown_voice_says_which_names_work(registry):
    settings = load_settings(None, registry=registry, env={"TTS_REMOTE_URL": "http://gpu-1:6006",
                                                           "TTS_VOICE_DIR": "/srv/voices"})
    assert resolve_voice(settings, "alloy") == {"spk_audio_path": "/srv/voices/alloy.wav"}
    with pytest.raises(RequestInvalid) as info:
        resolve_voice(settings, "../etc/passwd")
    message = info.value.message
    assert "plain name of letters, digits, - and _" in message and "/srv/voices/NAME.wav" in message
    assert "'alloy'" in message and info.value.param == "voice"


def test_with_configured_voices_only_an_unknown_voice_lists_them(registry):
    settings = load_settings(None, registry=registry, env={})  # the embedded default: a fixed list of voices
    with pytest.raises(RequestInvalid) as info:
        resolve_voice(settings, "nobody")
    assert "Available voices: alloy, ash," in info.value.message and "plain name" not in info.value.message
