"""Routing: pools of endpoints, picking one, health checks, dispatch with retry."""

from .dispatch import Dispatched, Router
from .endpoint import Endpoint
from .pool import Pool

__all__ = ["Dispatched", "Endpoint", "Pool", "Router"]
