from __future__ import annotations

import io
import struct
import sys
import wave

import av
import numpy as np
import pytest
import soundfile as sf

from speech_router.audio import FormatUnavailable, encode_all, make_encoder
from speech_router.audio.opus import PyavOpusEncoder
from speech_router.audio.sink import ByteSink
from speech_router.audio.sndfile import SndfileEncoder, mp3_stream_kbps

RATE = 22050
SECONDS = 1.5
TONE = 440.0
N_SAMPLES = int(RATE * SECONDS)  # 33075
PCM = (np.sin(2 * np.pi * TONE * np.arange(N_SAMPLES) / RATE) * 10000).astype("<i2").tobytes()

# What each format's decoded length may exceed the source by. Opus (pre-skip and end granule), FLAC
# and WAV are exact. Streamed mp3 and ADTS AAC carry no gapless info, so decoders also play the
# encoder delay (LAME: 1105 samples, AAC: 1024) plus the last frame's padding.
TOLERANCE = {"wav": 0.002, "flac": 0.002, "opus": 0.002, "mp3": 0.1, "aac": 0.1}
OUT_RATE = {"wav": RATE, "flac": RATE, "mp3": RATE, "opus": 24000, "aac": 24000}
CONTAINER_FORMATS = ["mp3", "opus", "aac", "flac", "wav"]


def decode(data: bytes) -> tuple[int, int, np.ndarray]:
    """(rate, channels, first channel as floats in [-1, 1]) using FFmpeg, independent of libsndfile."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(stream.channels, -1)[0] for frame in container.decode(stream)]
    samples = np.concatenate(frames)
    scale = 32768.0 if samples.dtype.kind == "i" else 1.0
    return stream.rate, stream.channels, samples.astype(np.float64) / scale


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(np.argmax(spectrum) * rate / len(middle))


def stream(fmt: str, piece_bytes: int, pcm: bytes = PCM, rate: int = RATE) -> tuple[list[bytes], bytes]:
    encoder = make_encoder(fmt, rate)
    pieces = [encoder.write(pcm[i : i + piece_bytes]) for i in range(0, len(pcm), piece_bytes)]
    return pieces, encoder.finish()


def opus_head(data: bytes) -> tuple[int, int]:
    """(channels, input sample rate) from the OpusHead packet."""
    at = data.index(b"OpusHead")
    return data[at + 9], struct.unpack_from("<I", data, at + 12)[0]


def flac_total_samples(data: bytes) -> int:
    assert data[:4] == b"fLaC"
    info = data[8:42]
    return int.from_bytes(info[10:18], "big") & (2**36 - 1)


@pytest.mark.parametrize("fmt", CONTAINER_FORMATS)
@pytest.mark.parametrize("mode", ["whole", "100-sample pieces", "odd-byte pieces"])
def test_every_format_decodes_to_the_source(fmt: str, mode: str) -> None:
    if mode == "whole":
        data = encode_all(PCM, RATE, fmt)
    else:
        pieces, tail = stream(fmt, 200 if mode == "100-sample pieces" else 4411)
        data = b"".join(pieces) + tail
    rate, channels, samples = decode(data)
    assert channels == 1
    if fmt == "opus":
        assert rate == 48000  # FFmpeg always decodes Opus at 48 kHz; the header keeps the encoded rate
        assert opus_head(data) == (1, 24000)
    else:
        assert rate == OUT_RATE[fmt]
    duration = len(samples) / rate
    assert SECONDS - 0.002 <= duration <= SECONDS + TOLERANCE[fmt], duration
    assert abs(dominant_hz(samples, rate) - TONE) < 5
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]  # lossy codecs ring at the hard cut at the end
    assert 0.28 < np.max(np.abs(middle)) < 0.34  # the source peaks at 10000 / 32768


@pytest.mark.parametrize("fmt", CONTAINER_FORMATS)
def test_streaming_hands_out_bytes_before_finish(fmt: str) -> None:
    pieces, tail = stream(fmt, 4410)  # 100 ms of audio per write
    early = sum(map(len, pieces))
    assert early > 0.5 * (early + len(tail))
    assert b"".join(pieces[:3])  # the first 300 ms already produce output


def test_pcm_is_raw_int16_at_24k() -> None:
    data = encode_all(PCM, RATE, "pcm")
    samples = np.frombuffer(data, "<i2")
    assert len(samples) == int(SECONDS * 24000)
    assert abs(dominant_hz(samples.astype(np.float64), 24000) - TONE) < 5
    pieces, tail = stream("pcm", 3)  # 1.5 samples per write
    assert np.abs(np.frombuffer(b"".join(pieces) + tail, "<i2").astype(int) - samples).max() <= 4


def test_pcm_at_its_own_rate_passes_through_byte_for_byte() -> None:
    encoder = make_encoder("pcm", 24000)
    assert encoder.write(PCM[:1]) == b""  # half a sample waits for its other byte
    assert encoder.write(PCM[1:101]) == PCM[:100]
    assert encoder.write(PCM[101:]) + encoder.finish() == PCM[100:]


def test_streamed_wav_has_unknown_sizes_and_reads_with_wave_module() -> None:
    pieces, tail = stream("wav", 4410)
    first = next(p for p in pieces if p)
    assert first[:4] == b"RIFF" and first[4:8] == b"\xff\xff\xff\xff"
    assert first[36:40] == b"data" and first[40:44] == b"\xff\xff\xff\xff"
    data = b"".join(pieces) + tail
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert w.readframes(N_SAMPLES * 2) == PCM


def test_whole_wav_has_exact_sizes() -> None:
    data = encode_all(PCM, RATE, "wav")
    assert struct.unpack_from("<I", data, 4)[0] == 36 + len(PCM)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() == N_SAMPLES
        assert w.readframes(N_SAMPLES) == PCM


def test_flac_streaminfo_is_final_when_whole_and_unknown_when_streamed() -> None:
    assert flac_total_samples(encode_all(PCM, RATE, "flac")) == N_SAMPLES
    pieces, tail = stream("flac", 4410)
    assert flac_total_samples(b"".join(pieces) + tail) == 0  # 0 means "unknown" in STREAMINFO


def test_mp3_whole_has_lame_tag_and_stream_drops_its_blank_placeholder() -> None:
    whole = encode_all(PCM, RATE, "mp3")
    assert b"Xing" in whole[:200] or b"Info" in whole[:200]
    pieces, tail = stream("mp3", 4410)
    streamed = b"".join(pieces) + tail
    assert streamed[:2] == b"\xff\xf3"  # starts on an MPEG-2 Layer III frame
    assert b"Xing" not in streamed[:200] and b"Info" not in streamed[:200]
    assert any(streamed[4:60])  # the first frame is audio, not LAME's zero-filled tag frame


def test_resampling_to_a_requested_rate() -> None:
    rate, _, samples = decode(encode_all(PCM, RATE, "wav", 16000))
    assert rate == 16000 and len(samples) == 24000
    rate, _, samples = decode(encode_all(PCM, RATE, "mp3", 44100))
    assert rate == 44100
    assert abs(dominant_hz(samples, rate) - TONE) < 5


def test_encoder_attributes() -> None:
    encoder = make_encoder("opus", RATE)
    assert (encoder.content_type, encoder.sample_rate) == ("audio/ogg", 24000)
    encoder = make_encoder("flac", RATE)
    assert (encoder.content_type, encoder.sample_rate) == ("audio/flac", RATE)
    assert make_encoder("mp3", RATE, 16000).sample_rate == 16000


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "pcm"])
def test_zero_samples_give_an_empty_body(fmt: str) -> None:
    encoder = make_encoder(fmt, RATE)
    assert encoder.write(b"") == b""
    assert encoder.finish() == b""
    assert encode_all(b"", RATE, fmt) == b""


def test_zero_samples_wav_is_a_valid_empty_file() -> None:
    for data in (make_encoder("wav", RATE).finish(), encode_all(b"", RATE, "wav")):
        assert len(data) == 44
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnframes()) == (RATE, 0)


def test_finish_is_idempotent_and_write_after_finish_fails() -> None:
    encoder = make_encoder("flac", RATE)
    assert encoder.write(PCM) + encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.write(PCM)


def test_bad_format_and_rates() -> None:
    with pytest.raises(ValueError, match="unknown audio format"):
        make_encoder("ogg", RATE)
    with pytest.raises(ValueError, match="44100"):
        make_encoder("mp3", RATE, 44000)
    with pytest.raises(ValueError, match="24000"):
        make_encoder("opus", RATE, 22050)


def test_aac_without_pyav_says_how_to_enable_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(FormatUnavailable, match=r"pip install 'speech-router\[aac\]'"):
        make_encoder("aac", RATE)
    with pytest.raises(FormatUnavailable):
        encode_all(PCM, RATE, "aac")
    assert encode_all(PCM, RATE, "mp3")  # the other formats do not need PyAV


def test_sink_drops_rewrites_of_bytes_already_taken() -> None:
    sink = ByteSink()
    sink.write(b"header--")
    assert sink.take() == b"header--"
    sink.write(b"body")
    sink.seek(0)
    sink.write(b"HEADER")  # e.g. FLAC patching STREAMINFO on close
    sink.seek(0, io.SEEK_END)
    sink.write(b"!")
    assert sink.take() == b"body!"
    assert sink.dropped == 6
    assert sink.tell() == sink.size == 13


def test_sink_keeps_rewrites_before_take() -> None:
    sink = ByteSink()
    sink.write(b"0000body")
    sink.seek(0)
    sink.write(b"1234")
    assert sink.take() == b"1234body"
    assert sink.dropped == 0


@pytest.mark.parametrize("path", ["pyav", "libsndfile"])
@pytest.mark.parametrize("mode", ["whole", "streamed"])
def test_opus_from_pyav_and_from_the_libsndfile_fallback(monkeypatch: pytest.MonkeyPatch, path: str, mode: str) -> None:
    with monkeypatch.context() as patch:
        if path == "libsndfile":
            patch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
        expected = SndfileEncoder if path == "libsndfile" else PyavOpusEncoder
        assert type(make_encoder("opus", RATE)) is expected
        assert make_encoder("opus", RATE).finish() == b""
        if mode == "whole":
            data = encode_all(PCM, RATE, "opus")
        else:
            pieces, tail = stream("opus", 4410)
            assert b"".join(pieces[:3])  # pages leave while the audio still comes in
            data = b"".join(pieces) + tail
    assert data[:4] == b"OggS"
    assert opus_head(data) == (1, 24000)
    rate, channels, samples = decode(data)  # FFmpeg, whichever encoder wrote it
    assert (rate, channels) == (48000, 1)
    assert SECONDS - 0.002 <= len(samples) / rate <= SECONDS + TOLERANCE["opus"]
    assert abs(dominant_hz(samples, rate) - TONE) < 5
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
    assert 0.28 < np.max(np.abs(middle)) < 0.34


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """(bitrate kbps, sample rate) of every MPEG-1/2 Layer III frame, walking the headers from the start."""
    frames, at = [], 0
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] & 0xE0 == 0xE0:
        mpeg1 = (data[at + 1] >> 3) & 3 == 3
        table = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320) if mpeg1 else (
            0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
        kbps, rate = table[data[at + 2] >> 4], (44100, 48000, 32000)[(data[at + 2] >> 2) & 3] >> (0 if mpeg1 else 1)
        frames.append((kbps, rate))
        at += (144 if mpeg1 else 72) * kbps * 1000 // rate + ((data[at + 2] >> 1) & 1)
    assert at >= len(data) - 128, "trailing bytes are at most an ID3v1 tag"
    return frames


@pytest.mark.parametrize("rate", [22050, 44100])
def test_streamed_mp3_is_constant_bitrate_so_libsndfile_reads_its_length(rate: int) -> None:
    encoder = make_encoder("mp3", RATE, rate)
    pieces = [encoder.write(PCM[i : i + 4410]) for i in range(0, len(PCM), 4410)]
    data = b"".join(pieces) + encoder.finish()
    assert isinstance(encoder, SndfileEncoder) and encoder.constant_bitrate
    assert set(mp3_frames(data)) == {(mp3_stream_kbps(rate), rate)}
    # libsndfile has no LAME/Xing frame to read and estimates the length from the first frame's bitrate
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert f.samplerate == rate
        read = sum(len(block) for block in f.blocks(blocksize=4096, dtype="int16"))
    for seconds in (read / rate, len(decode(data)[2]) / rate):  # libsndfile, then FFmpeg
        assert SECONDS - 0.002 <= seconds <= SECONDS + TOLERANCE["mp3"], seconds


def test_whole_mp3_stays_vbr_and_libsndfile_reads_its_length_from_the_lame_frame() -> None:
    data = encode_all(PCM, RATE, "mp3")
    with sf.SoundFile(io.BytesIO(data)) as f:
        assert SECONDS - 0.002 <= f.frames / f.samplerate <= SECONDS + TOLERANCE["mp3"]
