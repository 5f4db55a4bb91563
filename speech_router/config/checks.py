"""Checks that need this host: the environment variables and the files the router itself reads.

The schema (``loader``) cannot see them: a config can be valid on one machine and unusable on another.
``serve`` and ``check-config`` both run them (``speech_router.cli.prepare``), so a file that check-config
accepts is one that serve starts with, on the same host with the same environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .models import Settings

#: backend types whose endpoints read the voices' reference audio from this host (not from a remote node)
LOCAL_VOICE_TYPES = frozenset({"indextts2-local"})


def host_issues(settings: Settings, env: Mapping[str, str] | None = None) -> list[tuple[tuple[Any, ...], str]]:
    """Every problem of ``settings`` on this host, each with its location in the config."""
    env = os.environ if env is None else env
    return [*_key_variables(settings, env), *_local_files(settings)]


def _key_variables(settings: Settings, env: Mapping[str, str]) -> list[tuple[tuple[Any, ...], str]]:
    """``api_key_env`` names a variable that must be set: without it requests would go out with no key."""
    issues = []
    for name, pool in settings.pools.items():
        places = [(("pools", name, "api_key_env"), pool.api_key_env)]
        places += [(("pools", name, "endpoints", i, "api_key_env"), ep.api_key_env)
                   for i, ep in enumerate(pool.endpoints)]
        for loc, var in places:
            if var and not env.get(var):
                issues.append((loc, f"environment variable {var} is not set (the key sent to this pool's endpoints)"))
    return issues


def _local_files(settings: Settings) -> list[tuple[tuple[Any, ...], str]]:
    """Reference audio that an engine on this host reads must exist here."""
    local = [(name, pool) for name, pool in settings.pools.items() if pool.type in LOCAL_VOICE_TYPES]
    if not local:
        return []
    issues = []
    for voice, cfg in settings.voices.items():
        path = cfg.params().get("spk_audio_path")
        if isinstance(path, str) and not _is_file(path):
            issues.append((("voices", voice, "spk_audio_path"),
                           f"no such file on this host: {path} (pool {local[0][0]!r} of type {local[0][1].type!r} "
                           "reads voices here)"))
    for name, pool in local:
        warmup = pool.options.get("warmup_voice")
        if isinstance(warmup, str) and not _is_file(warmup):
            issues.append((("pools", name, "warmup_voice"), f"no such file on this host: {warmup}"))
    return issues


def _is_file(path: str) -> bool:
    return Path(os.path.expanduser(path)).is_file()
