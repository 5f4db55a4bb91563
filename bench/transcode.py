"""Transcoding speed on one core: 20 s of speech at 22,050 Hz through `encode_all` and `make_encoder`.

The speech comes from the embedded espeak-ng engine (`speech_router.backends.espeak_lib.Engine`, the
library behind the `espeak` backend), repeated until it lasts 20 s; where espeak cannot load, the
emulator's tone is used instead and the report says so.

    python -m bench.transcode [--repeats N] [--profile FMT]

`--profile` prints where one streaming encode of FMT spends its time (cProfile). `opus_table()` times
other ways to make the same Ogg/Opus stream, to show where the opus time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from speech_router.audio import encode_all, make_encoder
from speech_router.backends.http import CHUNK_SIZE  # what the router reads from a node at a time

RATE = 22_050
SECONDS = 20.0
CHUNK_S = 0.1  # the streaming encoder gets 100 ms of PCM per write()
FORMATS = ("mp3", "opus", "aac", "flac")
TARGET_S = 0.3  # issue #3: 20 s of audio transcoded in under 0.3 s on one core
CPU = 0
PARAGRAPH = (
    "Speech router puts one stable address in front of many speech servers. It checks their health, "
    "balances requests between them, retries on another node when one fails, and converts the audio "
    "into the format each client asked for, while the first bytes are already on their way. "
)


@dataclass
class Timing:
    fmt: str
    whole: list[float] = field(default_factory=list)
    stream: list[float] = field(default_factory=list)
    worst_write: float = 0.0  # slowest single write() of a 100 ms chunk, over all streaming runs
    first_big: list[float] = field(default_factory=list)  # a fresh encoder's first write() of CHUNK_SIZE bytes
    whole_bytes: int = 0
    stream_bytes: int = 0


@dataclass
class Result:
    source: str
    cpu: str
    timings: list[Timing]


@functools.cache
def speech_pcm() -> tuple[bytes, str]:
    """20 s of mono int16 PCM at 22,050 Hz, and where it came from (made once per process)."""
    n = int(SECONDS * RATE)
    try:
        from speech_router.backends.espeak_lib import Engine

        engine = Engine.load()
        if engine.sample_rate != RATE or not engine.set_voice("en-us"):
            raise RuntimeError(f"espeak runs at {engine.sample_rate} Hz or lacks en-us")
        engine.set_rate(175)
        pieces: list[bytes] = []

        def keep(pcm: bytes) -> bool:
            pieces.append(pcm)
            return False  # False: go on

        while sum(map(len, pieces)) < 2 * n:
            engine.synth(PARAGRAPH, keep)
        source = f"espeak-ng {engine.version} (voice en-us, 175 wpm), the paragraph repeated"
        return b"".join(pieces)[: 2 * n], source
    except Exception as exc:  # noqa: BLE001 - any failure: fall back and say why
        from speech_router.emulator.audio import render

        tone = render("x" * round(SECONDS / 0.06), "bench", RATE)[:n]
        return tone.astype("<i2").tobytes(), f"the emulator's tone (espeak unavailable: {exc})"


def _timed(fn: Callable[..., bytes], *args: object) -> tuple[float, bytes]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def _stream(fmt: str, pcm: bytes, timing: Timing) -> bytes:
    encoder = make_encoder(fmt, RATE)
    step = 2 * int(CHUNK_S * RATE)
    out = []
    for start in range(0, len(pcm), step):
        t0 = time.perf_counter()
        out.append(encoder.write(pcm[start:start + step]))
        timing.worst_write = max(timing.worst_write, time.perf_counter() - t0)
    out.append(encoder.finish())
    return b"".join(out)


def available_formats() -> tuple[str, ...]:
    """FORMATS, less aac when PyAV (the `aac` extra) is not installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        return tuple(f for f in FORMATS if f != "aac")
    return FORMATS


def run(repeats: int = 5) -> Result:
    """Time every format, pinned to CPU 0 (the previous affinity is restored afterwards)."""
    pcm, source = speech_pcm()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPU})
    try:
        timings = []
        for fmt in available_formats():
            t = Timing(fmt)
            encode_all(pcm[: 2 * RATE], RATE, fmt)  # load the codec once before timing
            for _ in range(repeats):
                seconds, data = _timed(encode_all, pcm, RATE, fmt)
                t.whole.append(seconds)
                t.whole_bytes = len(data)
                seconds, data = _timed(_stream, fmt, pcm, t)
                t.stream.append(seconds)
                t.stream_bytes = len(data)
                seconds, _ = _timed(make_encoder(fmt, RATE).write, pcm[:CHUNK_SIZE])
                t.first_big.append(seconds)
            timings.append(t)
    finally:
        os.sched_setaffinity(0, previous)
    return Result(source, f"pinned to CPU {CPU} with os.sched_setaffinity", timings)


def table(result: Result) -> str:
    rows = [
        f"### Transcoding {SECONDS:.0f} s of speech at {RATE:,} Hz on one core",
        "",
        f"Source: {result.source}; {result.cpu}; best / median of {len(result.timings[0].whole)}.",
        "",
        "| format | encode_all best / median ms | streaming (100 ms chunks) best / median ms | slowest chunk write ms "
        f"| first write of {CHUNK_SIZE // 1024} KiB ({CHUNK_SIZE / 2 / RATE:.2f} s), median ms "
        "| × real time (streaming median) | output kB (whole / streamed) | under 0.3 s |",
        "|---|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for t in result.timings:
        whole, stream = statistics.median(t.whole), statistics.median(t.stream)
        rows.append(
            f"| {t.fmt} | {min(t.whole) * 1000:.0f} / {whole * 1000:.0f} "
            f"| {min(t.stream) * 1000:.0f} / {stream * 1000:.0f} | {t.worst_write * 1000:.1f} "
            f"| {statistics.median(t.first_big) * 1000:.1f} "
            f"| {SECONDS / stream:.0f}× | {t.whole_bytes / 1000:.0f} / {t.stream_bytes / 1000:.0f} "
            f"| {'yes' if max(whole, stream) < TARGET_S else '**no**'} |"
        )
    return "\n".join(rows)


# Ogg/Opus alternatives, each fed the same 24 kHz PCM (resampled once, up front) in 100 ms chunks.
_SFC_SET_COMPRESSION_LEVEL = 0x1301  # sndfile.h; for Opus libsndfile maps it to a bitrate only


def _sndfile_opus(pcm24: np.ndarray, rate: int, kbps: int | None) -> bytes:
    import soundfile as sf

    from speech_router.audio.sink import ByteSink

    sink = ByteSink()
    out = []
    with sf.SoundFile(sink, "w", samplerate=rate, channels=1, format="OGG", subtype="OPUS") as f:
        if kbps is not None:  # libsndfile: bitrate = (1 - level) * 250 kbps + 6 kbps
            level = sf._ffi.new("double*", 1 - (kbps * 1000 - 6000) / 250_000)
            sf._snd.sf_command(f._file, _SFC_SET_COMPRESSION_LEVEL, level, sf._ffi.sizeof("double"))
        step = int(CHUNK_S * rate)
        for start in range(0, len(pcm24), step):
            f.write(pcm24[start:start + step])
            out.append(sink.take())
    return b"".join(out) + sink.take()


def _pyav_opus(pcm24: np.ndarray, complexity: int, kbps: int) -> bytes:
    import av

    from speech_router.audio.sink import ByteSink

    sink = ByteSink()
    out = []
    container = av.open(sink, "w", format="ogg", container_options={"page_duration": "100000"})
    stream = container.add_stream("libopus", rate=24000, layout="mono",
                                  options={"compression_level": str(complexity)})
    stream.bit_rate = kbps * 1000
    step = int(CHUNK_S * 24000)
    for start in range(0, len(pcm24), step):
        frame = av.AudioFrame.from_ndarray(pcm24[start:start + step].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 24000, start
        container.mux(stream.encode(frame))
        out.append(sink.take())
    container.mux(stream.encode(None))
    container.close()
    return b"".join(out) + sink.take()


def _libopus_version(path: str) -> str:
    import ctypes

    lib = ctypes.CDLL(path)
    lib.opus_get_version_string.restype = ctypes.c_char_p
    return str(lib.opus_get_version_string().decode())


def opus_table(repeats: int = 5) -> str:
    """Streaming Ogg/Opus made four ways on CPU 0: what the router does, and what would be faster."""
    import glob

    import soxr

    pcm, _ = speech_pcm()
    samples = np.frombuffer(pcm, dtype="<i2")
    at = {r: soxr.resample(samples, RATE, r) for r in (24000, 48000)}
    variants: list[tuple[str, Callable[..., bytes], tuple[object, ...]]] = [
        ("libsndfile, 24 kHz, default bitrate: **what the router does**", _sndfile_opus, (at[24000], 24000, None)),
        ("libsndfile, 24 kHz, 64 kbps (SFC_SET_COMPRESSION_LEVEL)", _sndfile_opus, (at[24000], 24000, 64)),
        ("libsndfile, 48 kHz, default bitrate", _sndfile_opus, (at[48000], 48000, None)),
    ]
    libopus = "libopus (libsndfile's)"
    try:
        import av  # noqa: F401

        found = glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libopus*"))
        libopus = _libopus_version(found[0]) if found else "libopus"
        variants += [
            (f"PyAV ({libopus}), 24 kHz, complexity 10, 48 kbps", _pyav_opus, (at[24000], 10, 48)),
            (f"PyAV ({libopus}), 24 kHz, complexity 5, 48 kbps", _pyav_opus, (at[24000], 5, 48)),
        ]
    except ImportError:
        pass
    rows = [
        f"#### Where the opus time goes: {SECONDS:.0f} s of the same speech, 100 ms chunks, CPU {CPU}, "
        f"best / median of {repeats}",
        "",
        "| encoder | best / median ms | kbps | under 0.3 s |",
        "|---|--:|--:|:-:|",
    ]
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPU})
    try:
        for name, encode, args in variants:
            encode(*args)  # warm-up
            times = []
            for _ in range(repeats):
                seconds, data = _timed(encode, *args)
                times.append(seconds)
            kbps = len(data) * 8 / SECONDS / 1000
            ok = "yes" if statistics.median(times) < TARGET_S else "**no**"
            rows.append(f"| {name} | {min(times) * 1000:.0f} / {statistics.median(times) * 1000:.0f} "
                        f"| {kbps:.0f} | {ok} |")
    finally:
        os.sched_setaffinity(0, previous)
    return "\n".join(rows)


def profile(fmt: str, top: int = 8) -> str:
    """cProfile of one streaming encode of `fmt`, by own time."""
    pcm, _ = speech_pcm()
    profiler = cProfile.Profile()
    profiler.runcall(_stream, fmt, pcm, Timing(fmt))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transcode", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement (1..50)")
    p.add_argument("--profile", choices=FORMATS, default=None, help="print a cProfile of one streaming encode")
    args = p.parse_args(argv)
    if not 1 <= args.repeats <= 50:
        p.error("--repeats must be 1..50")
    if args.profile:
        print(profile(args.profile))
        return 0
    print(table(run(args.repeats)))
    print()
    print(opus_table(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
