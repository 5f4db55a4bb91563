"""Issue #12's pieces on their own: audio validation, log redaction and format, the disk cache's budget when
deletes fail, and closing a removed pool's HTTP session."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
import soundfile as sf

from speech_router.audio.validate import AudioValidator, InvalidAudio, check_audio, max_audio_seconds
from speech_router.audio.wav import wav_header
from speech_router.backends.http import HttpSessions
from speech_router.cache import disk as disk_module
from speech_router.cache.disk import DiskTier
from speech_router.cache.entry import CachedAudio
from speech_router.config.loader import settings_from_dict
from speech_router.logs import JsonFormatter, Redactor, TextFormatter, configured_secrets, resolve_format


def wav(subtype: str = "PCM_16", frames: int = 22050, channels: int = 1, rate: int = 22050) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, channels)), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_sane_wavs_pass(subtype):
    check_audio(wav(subtype, channels=2), "wav", 10)


def test_a_streamed_wav_of_unknown_length_passes():
    check_audio(wav_header(22050) + b"\0" * 4410, "wav", 5)


@pytest.mark.parametrize("data,words", [
    (b"", "ended in its header"),
    (b"<html>bad gateway</html>", "not a WAV"),
    (wav(frames=0), "no audio"),
    (wav("PCM_U8"), "8-bit"),
    (wav_header(1, 1, 2000) + b"\0" * 2000, "1 Hz"),
    (wav(channels=3), "3 channels"),
    (wav_header(22050, 1, 1_000_000) + b"\0" * 4410, "says 1000000 bytes"),
    (wav(frames=22050 * 31), "more audio than 30 s"),
])
def test_bad_wavs_are_refused_saying_why(data, words):
    with pytest.raises(InvalidAudio, match=words):
        check_audio(data, "wav", 5)


def test_the_cap_grows_with_the_text_and_stops_a_stream_early():
    assert max_audio_seconds(5) == 30 and max_audio_seconds(100) == 200
    validator = AudioValidator("wav", 5)
    validator.feed(wav_header(22050))
    fed = 0
    with pytest.raises(InvalidAudio, match="more audio"):
        for _ in range(10_000):
            validator.feed(b"\0" * 65536)
            fed += 65536
    assert fed <= 30 * 22050 * 2  # stopped within the cap, not at the end of the stream


@pytest.mark.parametrize("data,fmt", [(b"", "mp3"), (b"\0" * 3, "pcm"), (b"\0" * (48_000 * 31 + 70_000), "pcm")])
def test_other_formats_must_be_non_empty_and_fit_the_text(data, fmt):
    with pytest.raises(InvalidAudio):
        check_audio(data, fmt, 5)


# --- logs -------------------------------------------------------------------------------------------------


def record(msg: str, *args, exc: BaseException | None = None, name: str = "speech_router.x") -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)


def test_the_redactor_masks_secrets_in_messages_arguments_and_tracebacks():
    redactor = Redactor()
    redactor.set_secrets(["sk-secret-123", "hdr-value-456", "ab"])  # too short to mask: kept
    try:
        raise ValueError("failed with sk-secret-123")
    except ValueError as exc:
        rec = record("headers %s to %s", {"X-Key": "hdr-value-456"}, "http://u:pw-789@node:1/x", exc=exc)
    assert redactor.filter(rec)
    line = TextFormatter().format(rec)
    for secret in ("sk-secret-123", "hdr-value-456", "pw-789"):
        assert secret not in line
    assert "***" in line
    short = record("a cab")
    redactor.filter(short)
    assert short.getMessage() == "a cab"  # "ab" is too short to be masked
    rec = record("sent {'Authorization': 'Bearer tok-unknown-1', 'Authorization: Basic dXNlcjpwYXNz'}")
    redactor.filter(rec)
    assert "tok-unknown-1" not in rec.getMessage() and "dXNlcjpwYXNz" not in rec.getMessage()


def test_configured_secrets_are_every_key_header_and_url_password():
    settings = settings_from_dict({
        "server": {"auth": {"keys": [{"name": "c", "key_env": "CLIENT"}]}},
        "pools": {"gpu": {"type": "index-tts-vllm", "api_key_env": "NODE", "headers": {"X-A": "pool-value"},
                          "endpoints": [{"url": "http://h:1", "headers": {"X-B": "ep-value"}}]},
                  # URL credentials go without an Authorization header (config refuses both): a pool of their own
                  "basic": {"type": "index-tts-vllm", "endpoints": [{"url": "http://u:url-pw@h:2"}]}},
        "models": {"m": ["gpu"]}}, env={"CLIENT": "client-key"})
    env = {"NODE": "node-key", "CLIENT": "client-key", "SPEECH_ROUTER_ADMIN_KEY": "admin-key",
           "SPEECH_ROUTER_API_KEYS": "n=env-key,bare-key"}
    assert configured_secrets(settings, env) >= {"node-key", "pool-value", "ep-value", "url-pw", "client-key",
                                                 "admin-key", "env-key", "bare-key"}


def test_url_credentials_are_masked_in_every_form_they_are_sent_in():
    settings = settings_from_dict({
        "pools": {"basic": {"type": "index-tts-vllm", "endpoints": [{"url": "http://user:p%40ss-w%C3%B6rd@h:2"}]},
                  "query": {"type": "index-tts-vllm", "endpoints": [{"url": "http://h:3/?token=q%2Fsecret-1"}]}},
        "models": {"m": ["basic"]}}, env={})
    redactor = Redactor()
    redactor.set_secrets(configured_secrets(settings, {}))
    password = "p@ss-wörd"
    token = base64.b64encode(f"user:{password}".encode("latin-1")).decode()
    said = (f"raw {password}; as in the url p%40ss-w%C3%B6rd; json {json.dumps(password)}; token {token}; "
            f"{[(b'authorization', b'Basic ' + token.encode())]}; query q/secret-1 and q%2Fsecret-1")
    masked = redactor.redact(said)
    for form in (password, "p%40ss-w%C3%B6rd", json.dumps(password)[1:-1], token, token[:10], "q/secret-1",
                 "q%2Fsecret-1"):
        assert form not in masked, form
    assert redactor.redact("basic settings and bearer tokens") == "basic settings and bearer tokens"


def test_json_lines_carry_level_logger_and_access_fields():
    line = JsonFormatter().format(record("hello %s", "there"))
    assert {k: v for k, v in json.loads(line).items() if k != "ts"} == {
        "level": "warning", "logger": "speech_router.x", "message": "hello there"}
    access = json.loads(JsonFormatter().format(record('{"ts": "t", "status": 200}', name="speech_router.access")))
    assert access == {"ts": "t", "level": "warning", "logger": "speech_router.access", "status": 200}
    try:
        raise KeyError("k")
    except KeyError as exc:
        assert "KeyError" in json.loads(JsonFormatter().format(record("x", exc=exc)))["exc"]


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


# --- disk cache, sessions -----------------------------------------------------------------------------------


def test_the_disk_tier_stays_within_budget_when_deletes_fail(tmp_path, monkeypatch):
    entry = CachedAudio(b"x" * 1000, "audio/wav", "wav")
    tier = DiskTier(tmp_path, budget=2500, max_entry=2000)
    assert tier.put("a" * 16, entry)[0] and tier.put("b" * 16, entry)[0]

    def refuse(path):
        if disk_module.TEMP_PREFIX not in str(path):  # the old entries cannot be deleted
            raise PermissionError(13, "Permission denied")
        real_unlink(path)

    real_unlink = disk_module._unlink

    monkeypatch.setattr(disk_module, "_unlink", refuse)
    stored, _ = tier.put("c" * 16, entry)
    monkeypatch.undo()
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert not stored
    assert on_disk <= tier.budget and tier.bytes == on_disk


@pytest.mark.anyio
async def test_close_pool_closes_only_that_pools_sessions():
    from speech_router.config.models import PoolConfig

    sessions = HttpSessions()
    a, b = PoolConfig(type="x"), PoolConfig(type="x")
    sa, sb = sessions.get("a", a), sessions.get("b", b)
    try:
        assert await sessions.close_pool("a") == 1
        assert sa.closed and not sb.closed
        assert sessions.get("a", a) is not sa  # a later use opens a new one
    finally:
        await sessions.aclose()
