"""Endpoints without a node, and a store that fails on demand, for the state package's unit tests."""

from __future__ import annotations

from speech_router.backends.base import Backend, Capabilities
from speech_router.config.models import EndpointConfig
from speech_router.router.endpoint import Endpoint
from speech_router.state.memory import MemoryStore
from speech_router.state.store import StoreError


class NoNode(Backend):
    type = "fake"
    capabilities = Capabilities(formats=frozenset({"wav"}))

    def __init__(self, name: str) -> None:
        super().__init__(EndpointConfig(url=f"http://{name}:1", name=name), Backend.Options(), None)  # type: ignore

    async def synthesize(self, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def health(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def fake_endpoint(name: str, pool: str = "gpu", max_concurrency: int = 4) -> Endpoint:
    ep = Endpoint(NoNode(name), pool, clock=lambda: 0.0, max_concurrency=max_concurrency)
    ep.healthy = True
    return ep


class FlakyStore(MemoryStore):
    """The in-process store, failing every call while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
        attr = super().__getattribute__(name)
        if name in ("ping", "get", "set", "delete", "incr", "put_entry", "entry", "entries", "drop_entry",
                    "acquire", "release", "put_bounded", "get_bounded"):
            async def call(*args, **kwargs):  # type: ignore[no-untyped-def]
                self.calls += 1
                if self.down:
                    raise StoreError("connection refused")
                return await attr(*args, **kwargs)
            return call
        return attr
