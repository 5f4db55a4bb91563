from __future__ import annotations

import dataclasses

import pytest

from speech_router.audio import FORMATS, SUPPORTED_FORMATS, AudioFormat, output_rate


def test_supported_formats_are_openais_six_in_order() -> None:
    assert SUPPORTED_FORMATS == ("mp3", "opus", "aac", "flac", "wav", "pcm")
    assert set(FORMATS) == set(SUPPORTED_FORMATS)


@pytest.mark.parametrize(
    ("fmt", "content_type", "rate"),
    [
        ("mp3", "audio/mpeg", None),
        ("opus", "audio/ogg", 24000),
        ("aac", "audio/aac", 24000),
        ("flac", "audio/flac", None),
        ("wav", "audio/wav", None),
        ("pcm", "audio/pcm", 24000),
    ],
)
def test_format_table(fmt: str, content_type: str, rate: int | None) -> None:
    spec = FORMATS[fmt]
    assert spec.name == fmt
    assert spec.content_type == content_type
    assert spec.sample_rate == rate
    assert spec.extension == fmt


def test_audio_format_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FORMATS["wav"].sample_rate = 8000  # type: ignore[misc]
    assert AudioFormat("x", "audio/x", "x").sample_rate is None


@pytest.mark.parametrize("fmt", ["pcm", "opus", "aac"])
def test_fixed_rate_wins_over_source_and_request(fmt: str) -> None:
    assert output_rate(fmt, 22050, None) == 24000
    assert output_rate(fmt, 16000, 44100) == 24000


@pytest.mark.parametrize("fmt", ["mp3", "flac", "wav"])
def test_free_formats_keep_source_unless_asked(fmt: str) -> None:
    assert output_rate(fmt, 22050, None) == 22050
    assert output_rate(fmt, 22050, 16000) == 16000


def test_flac_and_wav_accept_any_positive_rate() -> None:
    assert output_rate("wav", 22050, 11111) == 11111
    assert output_rate("flac", 22050, 96000) == 96000


def test_mp3_rejects_non_mpeg_rate_and_names_allowed_ones() -> None:
    with pytest.raises(ValueError) as info:
        output_rate("mp3", 22050, 44000)
    message = str(info.value)
    assert "44000" in message
    for allowed in ("8000", "11025", "22050", "44100", "48000"):
        assert allowed in message


def test_mp3_source_rate_lame_cannot_write_moves_to_next_mpeg_rate() -> None:
    assert output_rate("mp3", 20000, None) == 22050
    assert output_rate("mp3", 96000, None) == 48000
    assert output_rate("mp3", 44100, None) == 44100


@pytest.mark.parametrize("requested", [0, -8000])
def test_non_positive_rates_are_rejected(requested: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        output_rate("wav", 22050, requested)


def test_unknown_format_lists_supported_ones() -> None:
    with pytest.raises(ValueError, match="mp3, opus, aac, flac, wav, pcm"):
        output_rate("ogg", 22050, None)
