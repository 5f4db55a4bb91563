"""The worker's HTTP server: index-tts-vllm v2's ``/tts_url`` and ``/health``, with streaming.

The engine runs on one thread, one request at a time; requests wait in arrival order, at most
``max_queue`` of them (one more gets 503, so the router tries elsewhere). The event loop stays free
to answer ``/health`` while the engine works. ``POST /tts_url`` answers once the first segment is
ready: a WAV header with unknown sizes (0xFFFFFFFF, as OpenAI streams WAV) and then the PCM of each
segment as the engine yields it. Before the first segment, errors have their status: 400 for a bad
body, 503 while loading, when full or on CUDA out-of-memory (the cache is emptied and the worker
keeps serving), 500 otherwise, all as ``{"status": "error", "error": ...}``. After it, a failure
cuts the response short, which the router reads as a broken body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..audio.wav import wav_header
from . import EXIT_HUNG
from .engine import SAMPLE_RATE, IndexTts2Engine, gpu_memory, is_oom
from .jobs import DONE, Job, Slot
from .request import RequestError, infer_kwargs

log = logging.getLogger(__name__)

T = TypeVar("T")
DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its client is still there
HEALTH_GPU_TIMEOUT_S = 1.0


class WorkerState:
    """The engine, its loading phase and counters; ``app.state.worker``."""

    def __init__(self, engine: IndexTts2Engine, *, max_queue: int = 4, hang_timeout: float = 0.0,
                 on_ready: Callable[[WorkerState], None] | None = None,
                 on_failed: Callable[[WorkerState], None] | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.hang_timeout = hang_timeout  # 0: no self-watchdog (the supervisor watches instead)
        self.on_ready, self.on_failed = on_ready, on_failed
        self.phase = "loading"  # -> "ready" | "failed"
        self.load_error: str | None = None
        self.started_at = time.monotonic()
        self.loaded_in: float | None = None
        self.slot = Slot()
        self.running: Job | None = None
        self.served = self.failed = self.oom_errors = self.rejected_full = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indextts2")

    async def run_on_engine(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func)

    async def load(self) -> None:
        """Load and warm up on the engine thread; report through ``phase`` and the callbacks."""
        try:
            await self.run_on_engine(self.engine.load)
            await self.run_on_engine(self.engine.warm_up)
        except Exception as exc:  # noqa: BLE001 - a load failure is reported, not raised
            self.phase, self.load_error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading failed:\n%s", "".join(traceback.format_exception(exc)))
            if self.on_failed is not None:
                self.on_failed(self)
            return
        self.loaded_in = time.monotonic() - self.started_at
        self.phase = "ready"
        if self.on_ready is not None:
            self.on_ready(self)

    def record_error(self, message: str) -> None:
        self.failed += 1
        self.last_error, self.last_error_at = message, time.time()

    async def watchdog(self) -> None:
        """Standalone safety net: exit when a synthesis makes no progress for ``hang_timeout``."""
        while True:
            await asyncio.sleep(max(0.05, self.hang_timeout / 4))
            job = self.running
            if job is not None and time.monotonic() - job.progress_at > self.hang_timeout:
                log.critical("a synthesis made no progress for %gs; exiting so the worker is restarted",
                             self.hang_timeout)
                os._exit(EXIT_HUNG)

    def snapshot(self) -> dict[str, Any]:
        c = self.engine.config
        ready = self.phase == "ready"
        model = f"IndexTTS-{self.engine.version}"
        if ready:
            message = f"{model} loaded on {c.device}"
        elif self.phase == "loading":
            message = f"loading {model} on {c.device} ({time.monotonic() - self.started_at:.0f}s)"
        else:
            message = f"loading failed: {self.load_error}"
        return {
            "status": "healthy" if ready else "unhealthy", "message": message, "timestamp": time.time(),
            "engine": "indextts2", "phase": self.phase, "model_loaded": ready, "load_error": self.load_error,
            "loaded_in_s": self.loaded_in, "device": c.device, "model_dir": c.model_dir, "pid": os.getpid(),
            "busy": self.slot.busy, "queue_length": len(self.slot.waiters), "max_queue": self.max_queue,
            "served": self.served, "failed": self.failed, "oom_errors": self.oom_errors,
            "rejected_full": self.rejected_full, "last_error": self.last_error, "last_error_at": self.last_error_at,
            "gpu_memory_used_bytes": None, "gpu_memory_total_bytes": None, **self.engine.describe(),
        }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": message}, status_code=status)


def _state(request: Request) -> WorkerState:
    state: WorkerState = request.app.state.worker
    return state


async def _health(request: Request) -> Response:
    state = _state(request)
    body = state.snapshot()
    with contextlib.suppress(Exception):  # a stuck driver must not stall /health
        async with asyncio.timeout(HEALTH_GPU_TIMEOUT_S):  # not wait_for (router/health.py)
            mem = await asyncio.to_thread(gpu_memory, state.engine.config.device)
        if mem is not None:
            body["gpu_memory_used_bytes"], body["gpu_memory_total_bytes"] = mem
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)


async def _unless_disconnected(request: Request, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``awaitable``, giving up (and cancelling it) if the client goes away meanwhile."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return True, task.result()
            if await request.is_disconnected():
                if task.done():  # it finished meanwhile (the slot may be ours): let the caller go on
                    return True, task.result()
                return False, None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _tts_url(request: Request) -> Response:
    state = _state(request)
    try:
        kwargs = infer_kwargs(await request.json(), state.engine.version)
    except ValueError as exc:  # RequestError, or a body that is not JSON
        return _error(400, str(exc) if isinstance(exc, RequestError) else "the request body must be JSON")
    if state.phase != "ready":
        return _error(503, state.snapshot()["message"])
    if state.slot.busy and len(state.slot.waiters) >= state.max_queue:
        state.rejected_full += 1
        return _error(503, f"busy: {len(state.slot.waiters)} requests queued (max_queue {state.max_queue})")
    entered, _ = await _unless_disconnected(request, state.slot.enter())
    if not entered:
        return _error(499, "client went away")
    job = Job(kwargs)
    state.running = job
    future = asyncio.get_running_loop().run_in_executor(state.executor, job.run, state.engine)

    def finished(_: object) -> None:
        if state.running is job:
            state.running = None
        state.slot.leave()

    future.add_done_callback(finished)
    got, first = await _unless_disconnected(request, job.queue.get())
    if not got:
        job.cancel()
        return _error(499, "client went away")
    if isinstance(first, BaseException):
        return _failure(state, first)
    return StreamingResponse(_body(state, job, first), media_type="audio/wav")


def _failure(state: WorkerState, exc: BaseException) -> Response:
    if is_oom(exc):
        state.oom_errors += 1
        state.record_error(f"CUDA out of memory: {exc}")
        log.warning("CUDA out of memory; the cache was emptied and the worker goes on: %s", exc)
        return _error(503, f"CUDA out of memory on {state.engine.config.device}; try again or elsewhere")
    text = "".join(traceback.format_exception(exc))
    state.record_error(f"{type(exc).__name__}: {exc}")
    log.error("synthesis failed:\n%s", text)
    return _error(500, text)


async def _body(state: WorkerState, job: Job, first: object) -> AsyncIterator[bytes]:
    try:
        if first is DONE:  # no segment at all: an empty WAV
            yield wav_header(SAMPLE_RATE, 1, None)
            state.served += 1
            return
        assert isinstance(first, bytes)
        yield wav_header(SAMPLE_RATE, 1, None) + first
        while True:
            item = await job.queue.get()
            if item is DONE:
                state.served += 1
                return
            if isinstance(item, BaseException):
                _failure(state, item)  # counted and logged; the cut body tells the client
                raise RuntimeError("synthesis failed mid-stream") from item
            assert isinstance(item, bytes)
            yield item
    finally:
        job.cancel()


def create_app(state: WorkerState) -> Starlette:
    """The worker app; its lifespan starts loading the engine in the background."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(state.load())]
        if state.hang_timeout > 0:
            tasks.append(asyncio.create_task(state.watchdog()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            state.executor.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=[Route("/health", _health, methods=["GET"]), Route("/tts_url", _tts_url, methods=["POST"])],
                    lifespan=lifespan)
    app.state.worker = state
    return app
