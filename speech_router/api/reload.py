"""Hot reload: load and validate the config again, keep the running one when the new one is wrong,
apply the difference when it is right. Triggered by SIGHUP, a change of the file, or ``POST /admin/reload``.

Reloads run one at a time. Applying never drops a request: see ``Router.apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.loader import load_settings
from ..config.models import Settings
from ..errors import ConfigError
from ..logs import REDACTOR, configured_secrets, quiet_watchfiles
from .auth import Authenticator
from .state import AppState

log = logging.getLogger("speech_router.reload")

#: server settings read once at start-up: a change is logged but needs a restart
RESTART_ONLY = ("host", "port", "log_level", "log_format", "access_log", "watch_config", "max_header_bytes",
                "max_headers", "header_timeout", "body_timeout", "keepalive_timeout", "max_connections")
#: sources that a reload without a file reads again (the environment may not change, but the keys file may)
FROM_ENVIRONMENT = ("TTS_REMOTE_URL", "embedded default")
#: the file watcher waits this long for writes to settle before reloading
WATCH_DEBOUNCE_MS = 300
#: SIGHUP and file changes that arrive within this many seconds of each other make one reload
COALESCE_S = 0.5


@dataclass
class ReloadResult:
    """What a reload did: ``applied``, ``unchanged`` or ``invalid`` (with every error, located)."""

    result: str
    trigger: str
    errors: list[str] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    restart_needed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.result, "trigger": self.trigger}
        if self.errors:
            out["errors"] = self.errors
        if self.changes:
            out["changes"] = self.changes
        if self.restart_needed:
            out["restart_needed"] = self.restart_needed
        return out


class Reloader:
    """Owns the reload triggers of one app and swaps its settings (and router state) on success."""

    def __init__(self, state: AppState, config_path: str | None,
                 on_applied: list[Callable[[Settings, Settings], Any]] | None = None) -> None:
        self.state = state
        self.config_path = config_path
        #: called (or awaited) with (old, new) after a valid config was applied (e.g. rebuild the client keys)
        self.on_applied = on_applied or []
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._queued: asyncio.Task[Any] | None = None  # a SIGHUP/file reload waiting to start (coalesces)
        self._queued_triggers: list[str] = []
        self._sighup = False
        self._loaded_files: bytes | None = None  # what the files held at the last load (see _fingerprint)

    # -- triggers -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """SIGHUP (only possible in the main thread) and the file watcher, when there is a file to watch."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self._spawn, "sighup")
            self._sighup = True
        settings: Settings = self.state.settings
        self.refresh_secrets(settings)
        self._loaded_files = self._fingerprint(settings)
        if self.config_path and settings.server.watch_config:
            quiet_watchfiles()
            self._stop = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(Path(self.config_path), self._stop))

    async def stop(self) -> None:
        if self._sighup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._stop is not None:
            self._stop.set()
        for task in [t for t in (self._watcher, self._queued, *self._pending) if t is not None]:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def refresh_secrets(self, settings: Settings) -> None:
        """Tell the log's redaction filter every secret of ``settings`` (keys, header values, URL passwords)."""
        REDACTOR.set_secrets(configured_secrets(settings, self.state.env))

    def _spawn(self, trigger: str) -> None:
        """Reload soon; SIGHUP and file changes arriving together make one reload (the first one's trigger)."""
        self._queued_triggers.append(trigger)
        if self._queued is None:
            self._queued = asyncio.create_task(self._coalesced())

    async def _coalesced(self) -> None:
        await asyncio.sleep(COALESCE_S)
        triggers, self._queued_triggers, self._queued = self._queued_triggers, [], None
        if set(triggers) == {"file"} and self._fingerprint(self.state.settings) == self._loaded_files:
            log.debug("config files touched but unchanged: no reload")
            return
        task = asyncio.create_task(self.reload(triggers[0]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await task

    def _watched(self, settings: Settings) -> list[Path]:
        files = [Path(self.config_path)] if self.config_path else []
        if settings.server.auth.keys_file:
            files.append(Path(settings.server.auth.keys_file))
        return files

    def _fingerprint(self, settings: Settings) -> bytes:
        """The bytes of the config file and the keys file (what a file-triggered reload would read)."""
        parts = []
        for path in self._watched(settings):
            try:
                parts.append(path.read_bytes())
            except OSError as exc:
                parts.append(f"unreadable: {exc.errno}".encode())
        return b"\0".join(parts)

    async def _watch(self, path: Path, stop: asyncio.Event) -> None:
        """Watch the files' directories, not the files: editors and Kubernetes ConfigMaps replace files (rename,
        symlink swap). Only changes to the config file, the keys file or a ConfigMap's ``..data`` count."""
        from watchfiles import awatch

        log.info("watching %s for changes", path)

        def relevant(_change: Any, changed: str) -> bool:
            p = Path(changed)
            return p.name.startswith("..") or any(
                p == f or p.name == f.name and p.parent == f.parent or _same_file(p, f.resolve())
                for f in self._watched(self.state.settings))

        try:
            while not stop.is_set():
                files = self._watched(self.state.settings)
                directories = sorted({str(f.parent) for f in files})
                async for _changes in awatch(*directories, stop_event=stop, debounce=WATCH_DEBOUNCE_MS,
                                             recursive=False, watch_filter=relevant):
                    self._spawn("file")
                    if self._watched(self.state.settings) != files:
                        break  # the keys file moved: watch its new directory
        except Exception:  # noqa: BLE001 - a broken watcher must not take the router down
            log.exception("config file watcher stopped; SIGHUP and POST /admin/reload still reload")

    # -- the reload itself ----------------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            result = await self._reload(trigger)
        metrics = self.state.metrics
        metrics.config_reloads.labels(trigger, result.result).inc()
        metrics.config_last_reload_success.set(0 if result.result == "invalid" else 1)
        if result.result == "invalid":
            metrics.config_errors.inc(len(result.errors))
        return result

    async def _reload(self, trigger: str) -> ReloadResult:
        state = self.state
        old: Settings = state.settings
        if self.config_path is None and old.source not in FROM_ENVIRONMENT:
            return ReloadResult("invalid", trigger, errors=[
                "this router was started with settings given in code: there is no file to reload from"])
        # read before loading: a change made while loading still differs and triggers the next reload
        self._loaded_files = await asyncio.to_thread(self._fingerprint, old)
        try:
            new = await asyncio.to_thread(load_settings, self.config_path, registry=state.registry,
                                          env=state.env)
        except ConfigError as exc:
            return self._refused(trigger, exc)
        try:  # the client keys are part of the config: a broken keys file refuses the reload too
            auth = Authenticator.from_settings(new, env=state.env)
        except ConfigError as exc:
            return self._refused(trigger, exc)
        restart = [f"server.{k}" for k in RESTART_ONLY if getattr(old.server, k) != getattr(new.server, k)]
        restart += ["tracing"] if new.tracing != old.tracing else []
        for key in restart:
            log.warning("reload (%s): %s changed; it takes effect after a restart", trigger, key)
        if new.model_dump() == old.model_dump():
            await self._applied(old, new, auth)  # files the config points to (client keys) may have changed
            log.info("reload (%s): configuration unchanged", trigger)
            return ReloadResult("unchanged", trigger)
        try:
            changes = await state.router.apply(new)
        except ConfigError as exc:
            return self._refused(trigger, exc)
        await self._applied(old, new, auth)
        log.info("reload (%s) applied: %s", trigger,
                 "; ".join(f"{k}: {', '.join(v)}" for k, v in changes.items() if v) or "settings only")
        return ReloadResult("applied", trigger, changes=changes, restart_needed=restart)

    def _refused(self, trigger: str, exc: ConfigError) -> ReloadResult:
        errors = [issue.format(exc.source) for issue in exc.issues] or [str(exc)]
        log.error("reload (%s) refused: %d error%s; the running configuration stays", trigger, len(errors),
                  "" if len(errors) == 1 else "s")
        for line in errors:
            log.error("  %s", line)
        return ReloadResult("invalid", trigger, errors=errors)

    async def _applied(self, old: Settings, new: Settings, auth: Authenticator) -> None:
        state = self.state
        auth.inherit_rate_limits(state.auth)
        state.auth = auth
        state.settings = new
        self.refresh_secrets(new)
        state.metrics.config_loaded_timestamp.set(time.time())
        for callback in self.on_applied:
            result = callback(old, new)
            if inspect.isawaitable(result):
                await result


def _same_file(p: Path, target: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(p, target)
    return False
