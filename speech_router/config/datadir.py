"""Where the router keeps what it writes by default (uploaded voices): a place the user running it can write.

``voice_store.directory``, when the config does not set it:

1. ``$SPEECH_ROUTER_DATA_DIR/voices``: the operator named this router's data directory (the container image
   sets it to its volume, ``/var/lib/speech-router``, which its user owns);
2. else the user's data directory (``$XDG_DATA_HOME``, by default ``~/.local/share``), under
   ``speech-router/voices/<key>``, the key naming the config: ``<file name>-<hash of its absolute path>``
   for a config file, ``remote-<hash of TTS_REMOTE_URL>`` or ``embedded`` without one. Two unrelated routers
   of one user on one host so keep their uploads apart, while replicas started from one config file (or
   a restart) find theirs. Routers that should share voices set ``voice_store.directory`` to one directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

#: names this router's data directory (uploaded voices go in its ``voices``)
DATA_DIR_ENV = "SPEECH_ROUTER_DATA_DIR"
#: the config sources that are no file (``loader.load_settings``)
_REMOTE, _EMBEDDED = "TTS_REMOTE_URL", "embedded default"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_key(source: str, env: Mapping[str, str]) -> str:
    """A directory name for the config a router runs with (see the module docstring)."""
    if source == _REMOTE:
        return f"remote-{_digest(env.get('TTS_REMOTE_URL', ''))}"
    if not source or source == _EMBEDDED:
        return "embedded"
    path = os.path.abspath(source)
    return f"{Path(path).stem or 'config'}-{_digest(path)}"


def default_voice_directory(source: str, env: Mapping[str, str]) -> str:
    """``voice_store.directory`` when the config sets none."""
    if env.get(DATA_DIR_ENV):
        return str(Path(env[DATA_DIR_ENV]).expanduser() / "voices")
    home = env.get("HOME") or os.path.expanduser("~")
    data = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return str(Path(data).expanduser() / "speech-router" / "voices" / config_key(source, env))


def unwritable(directory: str) -> str | None:
    """Why this process cannot keep files in ``directory`` (made on first use when missing), or None."""
    path = Path(directory).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == path else f" (to create {path} in)"
        uid = f" (uid {os.getuid()})" if hasattr(os, "getuid") else ""
        return f"{existing}{what} is not writable by this user{uid}"
    return None
