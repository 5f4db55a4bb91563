"""State shared by router replicas through one store (Valkey or Redis), behind one small interface.

``store.StateStore`` is the interface (``memory.MemoryStore`` in-process, ``redis_store.RedisStore`` shared);
``hub.SharedState`` puts the parts together for the app when ``state.url`` is set. Nothing here is imported by
a router without a store (``speech_router.api.app``), and ``redis`` and ``limits`` only with a Valkey or Redis one.
"""
