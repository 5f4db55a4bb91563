"""The plugin manager: built-in backends and third-party plugins register the same way.

Third-party plugins declare an entry point in the ``speech_router`` group. Environment knobs:
``SPEECH_ROUTER_LOAD_PLUGINS=a,b`` loads only those distributions' entry points (``""`` none);
``SPEECH_ROUTER_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pluggy

from ..backends.base import Backend
from . import hookspecs

log = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "speech_router.backends.index_tts_vllm",
    "speech_router.backends.openai_compat",
    "speech_router.backends.espeak",
    "speech_router.backends.indextts2_local",
    "speech_router.backends.vllm_omni",
)
ENTRYPOINT_GROUP = "speech_router"


class BackendRegistry:
    """Backend types by their YAML ``type:`` name, collected from ``register_backends``."""

    def __init__(self) -> None:
        self.types: dict[str, type[Backend]] = {}

    def register(self, backend_cls: type[Backend], aliases: Iterable[str] = ()) -> None:
        if not (isinstance(backend_cls, type) and issubclass(backend_cls, Backend)):
            raise TypeError(f"{backend_cls!r} is not a Backend subclass")
        for name in (backend_cls.type, *aliases):
            existing = self.types.get(name)
            if existing is not None and existing is not backend_cls:
                raise ValueError(f"backend type {name!r} is registered twice: {existing!r} and {backend_cls!r}")
            self.types[name] = backend_cls

    def get(self, name: str) -> type[Backend]:
        return self.types[name]

    def __repr__(self) -> str:
        return f"BackendRegistry({sorted(self.types)})"


def create_plugin_manager(*, load_entrypoints: bool = True, plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A fresh manager with the hook specs, the built-in plugins, entry points and ``plugins``."""
    pm = pluggy.PluginManager("speech_router")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        _load_entrypoints(pm)
    for plugin in plugins:
        pm.register(plugin)
    if os.environ.get("SPEECH_ROUTER_TRACE_PLUGINS"):
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    only = os.environ.get("SPEECH_ROUTER_LOAD_PLUGINS")
    if only is None:
        pm.load_setuptools_entrypoints(ENTRYPOINT_GROUP)
        return
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"] not in wanted:
            continue
        for ep in dist.entry_points:
            if ep.group == ENTRYPOINT_GROUP and pm.get_plugin(ep.name) is None:
                pm.register(ep.load(), name=ep.name)


def backend_registry(pm: pluggy.PluginManager) -> BackendRegistry:
    """Ask every plugin for its backend types."""
    registry = BackendRegistry()
    pm.hook.register_backends(register=registry.register)
    return registry


def get_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, version and hooks of each registered plugin, for ``/-/plugins``."""
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = next((d for p, d in pm.list_plugin_distinfo() if p is plugin), None)
        out.append({"name": name, "hooks": hooks, "version": getattr(dist, "version", None)})
    return sorted(out, key=lambda p: p["name"])


def _trace_before(hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    log.info("hook %s -> %s", hook_name, [impl.plugin_name for impl in hook_impls])


def _trace_after(outcome: pluggy.Result[Any], hook_name: str, hook_impls: Sequence[pluggy.HookImpl],
                 kwargs: Mapping[str, Any]) -> None:
    log.info("hook %s done", hook_name)
