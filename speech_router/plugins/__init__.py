"""Plugins: hook specifications and the plugin manager."""

from .hookspecs import hookimpl, hookspec
from .manager import BackendRegistry, backend_registry, create_plugin_manager, get_plugins

__all__ = ["BackendRegistry", "backend_registry", "create_plugin_manager", "get_plugins", "hookimpl", "hookspec"]
