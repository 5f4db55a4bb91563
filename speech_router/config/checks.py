"""Checks that need this host: the environment variables and the files the router itself reads.

The schema (``loader``) cannot see them: a config can be valid on one machine and unusable on another.
``serve`` and ``check-config`` both run them (``speech_router.cli.prepare``), so a file that check-config
accepts is one that serve starts with, on the same host with the same environment.

They read the config tree as written (variables expanded), not validated ``Settings``, so they run in the
same pass as the schema: an unset ``${VAR}`` or a misspelt key elsewhere does not hide them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..voices.audio import check_reference_file
from .datadir import DATA_DIR_ENV, default_voice_directory, unwritable

#: backend types whose endpoints read the voices' reference audio from this host (not from a remote node)
LOCAL_VOICE_TYPES = frozenset({"indextts2-local"})
#: backend types that read a voice's ``ref_audio_file`` on this host and send it inline
REFERENCE_FILE_TYPES = frozenset({"vllm-omni"})

Issue = tuple[tuple[Any, ...], str]


def host_issues(data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = "") -> list[Issue]:
    """Every problem of the config tree ``data`` (loaded from ``source``) on this host, each with its location."""
    env = os.environ if env is None else env
    return [*_key_variables(data, env), *_client_keys(data, env), *_local_files(data), *_reference_files(data),
            *_voice_store(data, env, source)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pools(data: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, pool in _mapping(data.get("pools")).items():
        if isinstance(pool, Mapping):
            yield str(name), pool


def _voices(data: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, voice in _mapping(data.get("voices")).items():
        if isinstance(voice, Mapping):
            yield str(name), voice


def _key_variables(data: Mapping[str, Any], env: Mapping[str, str]) -> list[Issue]:
    """``api_key_env`` names a variable that must be set: without it requests would go out with no key."""
    issues = []
    for name, pool in _pools(data):
        endpoints = pool.get("endpoints")
        places: list[tuple[tuple[Any, ...], Any]] = [(("pools", name, "api_key_env"), pool.get("api_key_env"))]
        places += [(("pools", name, "endpoints", i, "api_key_env"), _mapping(ep).get("api_key_env"))
                   for i, ep in enumerate(endpoints if isinstance(endpoints, list) else [])]
        for loc, var in places:
            if isinstance(var, str) and var and not env.get(var):
                issues.append((loc, f"environment variable {var} is not set (the key sent to this pool's endpoints)"))
    return issues


def _client_keys(data: Mapping[str, Any], env: Mapping[str, str]) -> list[Issue]:
    """A client key entry names the variable that holds its secret (``api.auth`` reads it the same way)."""
    keys = _mapping(_mapping(_mapping(data.get("server")).get("auth"))).get("keys")
    issues = []
    for i, entry in enumerate(keys if isinstance(keys, list) else []):
        var = _mapping(entry).get("key_env")
        if isinstance(var, str) and var and not env.get(var):
            issues.append((("server", "auth", "keys", i, "key_env"), f"environment variable {var} is not set"))
    return issues


def _reader(data: Mapping[str, Any], types: frozenset[str]) -> str | None:
    """``pool 'NAME' of type 'TYPE'`` for the first pool of ``types``, which reads voices' files on this host."""
    return next((f"pool {name!r} of type {pool['type']!r}" for name, pool in _pools(data) if pool.get("type") in types),
                None)


def _local_files(data: Mapping[str, Any]) -> list[Issue]:
    """Reference audio that an engine on this host reads must exist here."""
    reader = _reader(data, LOCAL_VOICE_TYPES)
    if reader is None:
        return []
    issues = []
    for voice, cfg in _voices(data):
        path = cfg.get("spk_audio_path")
        if isinstance(path, str) and not _is_file(path):
            issues.append((("voices", voice, "spk_audio_path"), f"no such file on this host: {path} ({reader} "
                                                                 "reads voices here)"))
    for name, pool in _pools(data):
        if pool.get("type") not in LOCAL_VOICE_TYPES:
            continue
        warmup = pool.get("warmup_voice")
        if isinstance(warmup, str) and not _is_file(warmup):
            issues.append((("pools", name, "warmup_voice"), f"no such file on this host: {warmup}"))
    return issues


def _reference_files(data: Mapping[str, Any]) -> list[Issue]:
    """A voice's ``ref_audio_file`` is read here and sent to vllm-omni nodes: it must be usable audio."""
    reader = _reader(data, REFERENCE_FILE_TYPES)
    if reader is None:
        return []
    issues = []
    for voice, cfg in _voices(data):
        path = cfg.get("ref_audio_file")
        if not isinstance(path, str) or not path:
            continue
        try:
            check_reference_file(os.path.abspath(os.path.expanduser(path)))
        except ValueError as exc:
            issues.append((("voices", voice, "ref_audio_file"),
                           f"{path} cannot be used: {exc} ({reader} sends it from this host)"))
    return issues


def _voice_store(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> list[Issue]:
    """Uploads are kept in ``voice_store.directory``: found unwritable now, not as a 503 on the first upload."""
    store = _mapping(data.get("voice_store"))
    if store.get("enabled", True) is False:
        return []
    configured = store.get("directory")
    directory = configured if isinstance(configured, str) and configured else default_voice_directory(source, env)
    problem = unwritable(directory)
    if problem is None:
        return []
    which = "" if configured else f"the default voice store {directory}: "
    return [(("voice_store", "directory"), f"{which}{problem}, so uploaded voices cannot be kept; set "
                                           f"voice_store.directory (or {DATA_DIR_ENV}) to a directory this user "
                                           "can write, or voice_store.enabled: false")]


def _is_file(path: str) -> bool:
    return Path(os.path.expanduser(path)).is_file()
