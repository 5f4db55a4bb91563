from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from speech_router.audio import InvalidAudio, PcmFormat, WavStreamParser, read_wav, wav_header

RATE = 22050


def sine(seconds: float = 0.25, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_chunk(tag: int, channels: int, rate: int, bits: int) -> bytes:
    align = channels * bits // 8
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits))


def python_wave(samples: np.ndarray, channels: int = 1, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def feed_in_pieces(data: bytes, size: int) -> tuple[WavStreamParser, list[bytes]]:
    parser = WavStreamParser()
    outs = [parser.feed(data[i : i + size]) for i in range(0, len(data), size)]
    return parser, outs


def test_header_with_known_length_reads_back_with_wave_module() -> None:
    pcm = sine().tobytes()
    data = wav_header(RATE, 1, len(pcm)) + pcm
    assert len(wav_header(RATE, 1, len(pcm))) == 44
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        assert w.getnframes() == len(pcm) // 2
        assert w.readframes(w.getnframes()) == pcm


def test_header_without_length_uses_unknown_sizes() -> None:
    header = wav_header(24000)
    assert len(header) == 44
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[36:40] == b"data" and header[40:44] == b"\xff\xff\xff\xff"
    assert struct.unpack_from("<I", header, 24)[0] == 24000


def test_parser_returns_pcm_of_a_python_written_file() -> None:
    samples = sine()
    parser = WavStreamParser()
    assert parser.format is None and not parser.header_complete
    out = parser.feed(python_wave(samples))
    assert parser.format == PcmFormat(RATE, 1, 2)
    assert parser.header_complete
    assert out == samples.tobytes()


def test_byte_at_a_time_equals_whole() -> None:
    data = python_wave(sine(0.05))
    whole = WavStreamParser().feed(data)
    parser, outs = feed_in_pieces(data, 1)
    assert b"".join(outs) == whole
    assert len(whole) == int(RATE * 0.05) * 2
    assert parser.format == PcmFormat(RATE, 1, 2)


def test_format_is_known_before_data_arrives() -> None:
    data = python_wave(sine(0.01))
    parser = WavStreamParser()
    assert parser.feed(data[:36]) == b""  # RIFF header + fmt chunk, no data chunk header yet
    assert parser.format == PcmFormat(RATE, 1, 2)
    assert not parser.header_complete
    parser.feed(data[36:44])
    assert parser.header_complete


def test_stereo_is_averaged_to_mono_and_odd_boundaries_keep_whole_frames() -> None:
    left = np.array([1000, -3, 32767, -32768, 0], dtype="<i2")
    right = np.array([3000, -1, 32767, -32768, 10], dtype="<i2")
    data = python_wave(np.column_stack([left, right]).reshape(-1), channels=2)
    parser, outs = feed_in_pieces(data, 3)  # 3-byte pieces split the 4-byte stereo frames
    assert all(len(out) % 2 == 0 for out in outs)
    assert np.frombuffer(b"".join(outs), "<i2").tolist() == [2000, -2, 32767, -32768, 5]
    assert parser.format == PcmFormat(RATE, 2, 2)


def test_partial_frame_is_held_back_until_complete() -> None:
    data = python_wave(np.array([100, 200, 300], dtype="<i2"))
    parser = WavStreamParser()
    assert parser.feed(data[:47]) == struct.pack("<h", 100)  # 44-byte header, one sample and a half
    assert parser.feed(data[47:48]) == struct.pack("<h", 200)
    assert parser.feed(data[48:]) == struct.pack("<h", 300)


def test_float32_input_becomes_int16() -> None:
    floats = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -2.0], dtype="<f4")
    data = riff(fmt_chunk(3, 1, 16000, 32), chunk(b"fact", struct.pack("<I", 7)), chunk(b"data", floats.tobytes()))
    rate, pcm = read_wav(data)
    assert rate == 16000
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_extensible_float_stereo() -> None:
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 48000, 48000 * 8, 8, 32, 22, 32, 3) + struct.pack("<H", 3) + guid_tail
    frames = np.array([[0.25, 0.75], [-1.0, -1.0]], dtype="<f4")
    data = riff(chunk(b"fmt ", ext), chunk(b"data", frames.tobytes()))
    parser = WavStreamParser()
    out = parser.feed(data)
    assert parser.format == PcmFormat(48000, 2, 4)
    assert np.frombuffer(out, "<i2").tolist() == [16384, -32767]


def test_list_chunk_with_odd_size_before_data_is_skipped() -> None:
    samples = np.array([1, -2, 3, -4], dtype="<i2")
    data = riff(fmt_chunk(1, 1, RATE, 16), chunk(b"LIST", b"INFOx"), chunk(b"data", samples.tobytes()))
    assert b"".join(feed_in_pieces(data, 1)[1]) == samples.tobytes()
    assert read_wav(data) == (RATE, samples.tobytes())


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_streaming_data_size_reads_to_the_end(size: int) -> None:
    samples = sine(0.02)
    header = riff(fmt_chunk(1, 1, RATE, 16)) + b"data" + struct.pack("<I", size)
    _, outs = feed_in_pieces(header + samples.tobytes(), 101)
    assert b"".join(outs) == samples.tobytes()


def test_own_streamed_header_round_trips() -> None:
    samples = sine(0.02)
    assert read_wav(wav_header(RATE) + samples.tobytes()) == (RATE, samples.tobytes())


def test_known_data_size_ignores_trailing_chunks() -> None:
    samples = np.array([7, 8, 9], dtype="<i2")
    data = riff(fmt_chunk(1, 1, RATE, 16), chunk(b"data", samples.tobytes()), chunk(b"LIST", b"INFOabcd"))
    parser, outs = feed_in_pieces(data, 5)
    assert b"".join(outs) == samples.tobytes()
    assert parser.feed(b"more bytes after the end") == b""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04 this is an mp3", "RIFF"),
        (b"<html>502 Bad Gateway</html>", "RIFF"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", "WAVE"),
        (riff(fmt_chunk(1, 1, 1, 16), chunk(b"data", b"\0" * 6)), "1 Hz"),
        (riff(fmt_chunk(1, 3, RATE, 16), chunk(b"data", b"\0" * 6)), "3 channels"),
        (riff(fmt_chunk(1, 1, RATE, 8), chunk(b"data", b"\0" * 6)), "8-bit"),
        (riff(fmt_chunk(0x55, 1, RATE, 16), chunk(b"data", b"\0" * 6)), "0x0055"),
        (riff(chunk(b"data", b"\0" * 6), fmt_chunk(1, 1, RATE, 16)), "before fmt"),
    ],
)
def test_invalid_input_raises_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(InvalidAudio, match=message):
        WavStreamParser().feed(data)
    with pytest.raises(ValueError):  # InvalidAudio is a ValueError for callers that catch broadly
        read_wav(data)


def test_garbage_is_rejected_on_its_first_byte() -> None:
    with pytest.raises(InvalidAudio):
        WavStreamParser().feed(b"{")


def test_truncated_header_fails_on_close() -> None:
    parser = WavStreamParser()
    assert parser.feed(python_wave(sine(0.01))[:30]) == b""
    with pytest.raises(InvalidAudio, match="ended"):
        parser.close()
    with pytest.raises(InvalidAudio):
        read_wav(b"")
