"""The HTTP API: Starlette app, routes, error shapes."""

from .app import create_app

__all__ = ["create_app"]
