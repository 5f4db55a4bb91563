"""Helpers for the voice registry tests: multipart uploads, reference audio, the nodes' view of a shared directory."""

from __future__ import annotations

import hashlib
import io
import secrets
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.client import Reply, call
from tests.worker.conftest import wait_until

__all__ = ["ADMIN_KEY", "ENV", "long_flac", "mounted", "pitch", "stored_wav", "tone", "upload", "wait_until"]

ADMIN_KEY = "voices-admin-key"
ENV = {"SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}


def tone(seconds: float = 2.0, rate: int = 16000, hz: float = 150.0, channels: int = 1, fmt: str = "WAV") -> bytes:
    """A reference recording (a buzz at ``hz``), as a client would upload it."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sign(np.sin(2 * np.pi * hz * t)) * 0.2
    data = np.stack([wave * (1 + i / 4) for i in range(channels)], axis=1) if channels > 1 else wave
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def long_flac(seconds: float = 31.0, rate: int = 8000) -> bytes:
    """A FLAC of ``seconds`` of a steady level: a few hundred bytes that decode to a long reference."""
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * rate), 0.1), rate, format="FLAC")
    return buf.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = "----speech-router-" + secrets.token_hex(8)
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, kind) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f"Content-Type: {kind}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload(url: str, name: str | None, audio: bytes | None, *, key: str | None = ADMIN_KEY, consent: str | None = "yes",
           **fields: str) -> Reply:
    """``POST /v1/audio/voices`` with vllm-omni's fields (a None leaves a field out)."""
    form = {k: v for k, v in {"name": name, "consent": consent, **fields}.items() if v is not None}
    files = {"audio_sample": ("voice.wav", audio, "audio/wav")} if audio is not None else {}
    body, kind = multipart(form, files)
    return call(url + "/v1/audio/voices", raw=body, headers={"Content-Type": kind}, key=key)


def stored_wav(store: Path, sha256: str) -> bytes:
    data = (store / "audio" / f"{sha256}.wav").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256  # stored by its content hash
    return data


def mounted(store: Path, mount: str) -> set[str]:
    """The reference files a node that mounts ``store`` at ``mount`` sees (the index-tts-vllm emulator's knob)."""
    return {f"{mount}/{p.relative_to(store).as_posix()}" for p in store.rglob("*.wav") if not p.name.startswith(".")}


def pitch(wav: bytes) -> float:
    from speech_router.emulator import audio

    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    return audio.dominant_hz(np.asarray(samples), rate)
