"""Backend type ``indextts2-local``: IndexTTS2 on this host's GPUs, one supervised worker process per device.

The router never imports torch or index-tts: each endpoint owns a worker process
(``python -m speech_router.worker indextts2 ...``, see ``speech_router.worker``) that loads the
official ``indextts.infer_v2.IndexTTS2`` once on its device and speaks index-tts-vllm v2's HTTP
protocol on a free 127.0.0.1 port, plus streaming: one WAV segment after another as the model makes
them. So requests are built and read by ``IndexTtsVllmBackend``'s code.

Pool options (YAML keys next to ``type:``)::

    local:
      type: indextts2-local
      model_dir: /opt/index-tts/checkpoints
      devices: [cuda:0, cuda:1]     # one worker and one endpoint per device
      fp16: true
      version: auto                 # "2" (indextts.infer_v2), "2.5" (infer_v2_5), auto: read from the checkpoint

IndexTTS-2.5 adds native speed (``duration_factor = 1 / speed``, 0.5-2.0) and a language per request:
the client's (``lang`` on the native route) or one guessed from the text (``text.language``).

``health()`` is unhealthy, with the reason, while a worker starts or loads, after a load failure
(the worker's last output is kept) and while it restarts; the router keeps serving other pools.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import sysconfig
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config.models import EndpointConfig, PoolConfig
from ..errors import BackendError, BackendTimeout, BackendUnavailable, ConfigError, ConfigIssue
from ..plugins.hookspecs import RegisterBackend, hookimpl
from ..text.language import request_lang
from ..types import AudioResponse, HealthReport, SynthesisRequest
from ..worker import DEFAULT_WARMUP_TEXT
from ..worker.checkpoint import detect
from ..worker.supervisor import Supervisor, Ticket, WorkerSpec
from .base import Backend, BackendContext, Capabilities
from .index_tts_vllm import IndexTtsVllmBackend
from .indextts25 import SPEED_RANGE_25, Version, VersionOption, duration_factor

log = logging.getLogger(__name__)

SAMPLE_RATE = 22_050
DEFAULT_STARTUP_TIMEOUT_S = 600.0  # loading, the warm-up, and first-run downloads of helper models
DEFAULT_HANG_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 10.0
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


class RestartBackoff(BaseModel):
    """Seconds between restarts of a failing worker: ``initial``, doubling up to ``max``."""

    model_config = ConfigDict(extra="forbid")

    initial: float = Field(1.0, gt=0)
    max: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RestartBackoff:
        if self.max < self.initial:
            raise ValueError("max must be at least initial")
        return self


class IndexTts2LocalBackend(IndexTtsVllmBackend):
    """One device of this host, served by a worker process this backend starts and supervises."""

    type = "indextts2-local"
    capabilities = Capabilities(formats=frozenset({"wav"}), streaming=True, emotion=True,
                                voice_keys=("spk_audio_path",), needs_url=False)

    class Options(Backend.Options):
        model_dir: str = Field(description="the IndexTTS-2 checkpoints directory on this host")
        cfg_path: str | None = Field(None, description="default: <model_dir>/config.yaml")
        devices: list[str] = Field(default_factory=lambda: ["cuda:0"], min_length=1,
                                   description="one worker process and one endpoint per device")
        version: VersionOption = Field(
            "auto", description="IndexTTS-2 or IndexTTS-2.5; auto: read from the checkpoint in model_dir")
        fp16: bool = Field(False, description="half precision (IndexTTS-2.5: bf16)")
        bf16: bool = Field(False, description="IndexTTS-2.5: bfloat16 weights")
        use_cuda_kernel: bool = False
        use_torch_compile: bool = False
        engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="more IndexTTS2() arguments")
        max_queue: int = Field(4, ge=0, description="requests waiting in a worker behind the running one")
        warmup_text: str = Field(DEFAULT_WARMUP_TEXT, description="'' skips the warm-up")
        warmup_voice: str | None = Field(None, description="speaker reference for the warm-up; default synthetic")
        python: str | None = Field(None, description="interpreter with index-tts installed; default: the router's")
        workdir: str | None = Field(None, description="the worker's directory (index-tts caches helper models "
                                                      "in ./checkpoints/hf_cache); default: model_dir's parent")
        env: dict[str, str] = Field(default_factory=dict, description="extra environment for the workers")
        startup_timeout: float = Field(DEFAULT_STARTUP_TIMEOUT_S, gt=0)
        hang_timeout: float = Field(DEFAULT_HANG_TIMEOUT_S, gt=0, description="no bytes for this long: restart")
        stop_timeout: float = Field(DEFAULT_STOP_TIMEOUT_S, gt=0, description="SIGTERM, then SIGKILL after this")
        restart_backoff: RestartBackoff = RestartBackoff()

        @field_validator("devices")
        @classmethod
        def _devices(cls, value: list[str]) -> list[str]:
            for device in value:
                if not _DEVICE.match(device):
                    raise ValueError(f"invalid device {device!r}: use cuda:N (or cpu, mps, xpu:N)")
            if len(set(value)) != len(value):
                raise ValueError("devices must be different")
            return value

    options: Options  # this type's own keys (``Backend.options``, narrowed)

    @classmethod
    def expand_endpoints(cls, pool_name: str, pool: PoolConfig,
                         options: BaseModel) -> list[tuple[EndpointConfig, BaseModel]]:
        """One endpoint per device, named ``<pool>-<device>``, each with its own options (``devices: [d]``).

        Each takes ``max_queue + 1`` requests at a time (the running one and the queue), unless the pool
        sets ``max_concurrency``; more wait in the router's queue, where another endpoint may take them.
        """
        assert isinstance(options, cls.Options)
        if pool.endpoints:
            raise ConfigError([ConfigIssue(f"pools.{pool_name}.endpoints", f"type {cls.type!r} has one endpoint "
                                           "per device: list `devices` instead of endpoints")])
        limit = None if "max_concurrency" in pool.model_fields_set else options.max_queue + 1
        return [(EndpointConfig(name=f"{pool_name}-{device}", max_concurrency=limit),
                 options.model_copy(update={"devices": [device]})) for device in options.devices]

    def __init__(self, endpoint: EndpointConfig, options: Options, context: BackendContext) -> None:
        Backend.__init__(self, endpoint, options, context)
        self.api = "v2"
        self.device = options.devices[0]
        self.version: Version = "2.5" if options.version == "2.5" else "2"
        if options.version == "auto":
            model_dir = _local_path(options.model_dir)
            self.version, why = detect(model_dir, _local_path(options.cfg_path) if options.cfg_path else None)
            log.info("pool %s: IndexTTS-%s in %s (%s)", context.pool_name, self.version, model_dir, why)
        if self.version == "2.5":  # native speed, within 2.5's range
            self.capabilities = dataclasses.replace(self.capabilities, speed=True, speed_range=SPEED_RANGE_25)
        if len(options.devices) > 1:
            log.warning("pool %s: this router builds one endpoint for the pool, so only %s is used; the other "
                        "devices need Backend.expand_endpoints support", context.pool_name, self.device)
        spec = WorkerSpec(argv=self.worker_command(), env=self.worker_env(), startup_timeout=options.startup_timeout,
                          hang_timeout=options.hang_timeout, backoff_initial=options.restart_backoff.initial,
                          backoff_max=options.restart_backoff.max, stop_timeout=options.stop_timeout)
        self.supervisor = Supervisor(self.name or f"{context.pool_name}-{self.device}", spec)

    @property
    def url(self) -> str:
        """The worker's base URL; it changes when the worker restarts."""
        return self.supervisor.url or ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, state={self.supervisor.state!r})"

    def worker_command(self) -> list[str]:
        o = self.options
        model_dir = _local_path(o.model_dir)
        cmd = [o.python or sys.executable, "-m", "speech_router.worker", "indextts2", "--model-dir", model_dir,
               "--cfg-path", _local_path(o.cfg_path) if o.cfg_path else os.path.join(model_dir, "config.yaml"),
               "--device", self.device, "--model-version", self.version, "--host", "127.0.0.1", "--port", "0",
               "--max-queue", str(o.max_queue),
               f"--warmup-text={o.warmup_text}", "--parent-pid", str(os.getpid()), "--exit-on-load-failure"]
        if o.warmup_voice:
            cmd += ["--warmup-voice", _local_path(o.warmup_voice)]
        if o.workdir:
            cmd += ["--workdir", _local_path(o.workdir)]
        if o.engine_kwargs:
            cmd += ["--engine-kwargs", json.dumps(o.engine_kwargs)]
        cmd += [flag for flag, on in (("--fp16", o.fp16), ("--bf16", o.bf16), ("--cuda-kernel", o.use_cuda_kernel),
                                      ("--torch-compile", o.use_torch_compile)) if on]
        return cmd

    def worker_env(self) -> dict[str, str]:
        o = self.options
        env = {**os.environ, **o.env, "PYTHONUNBUFFERED": "1"}
        root = _source_root()
        if o.python is None and root is not None:  # a checkout: the worker runs this same speech_router
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    async def open(self) -> None:
        """Start the worker and return at once: it loads in the background and ``health()`` says how far."""
        self.supervisor.start()

    async def aclose(self) -> None:
        await self.supervisor.aclose()

    def request_body(self, request: SynthesisRequest) -> tuple[str, dict[str, Any]]:
        """index-tts-vllm v2's body; reference paths are files on this host, made absolute for the worker."""
        path, body = super().request_body(request)
        body = dict(body)
        for key in ("spk_audio_path", "emo_ref_path"):
            if isinstance(body.get(key), str) and body[key]:
                body[key] = _local_path(body[key])
        if self.version == "2.5" and request.passthrough is None:
            body["lang"] = request_lang(request.lang, request.text)
            if request.speed != 1.0:
                body["duration_factor"] = duration_factor(request.speed, backend=self.type)
        return path, body

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        sup = self.supervisor
        if not sup.ready:
            raise BackendUnavailable(f"endpoint {self.name} is not ready: {sup.detail}", endpoint=self.name)
        ticket = sup.begin()
        try:
            response = await super().synthesize(request)
        except BackendError as exc:
            ticket.end()
            raise self._classified(exc, ticket) from None
        except BaseException:
            ticket.end()
            raise
        ticket.progress()
        response.sample_rate = SAMPLE_RATE
        response.chunks = self._watched(response.chunks, ticket)
        inner_close = response.close

        async def close() -> None:
            ticket.end()
            if inner_close is not None:
                await inner_close()

        response.close = close
        return response

    async def _watched(self, chunks: AsyncIterator[bytes], ticket: Ticket) -> AsyncIterator[bytes]:
        """The body, marking progress for the hang watchdog; a killed worker's cut reads as a timeout."""
        try:
            async for chunk in chunks:
                ticket.progress()
                yield chunk
        except BackendError as exc:
            raise self._classified(exc, ticket) from None
        finally:
            ticket.end()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _classified(self, exc: BackendError, ticket: Ticket) -> BackendError:
        if ticket.hung:
            return BackendTimeout(f"endpoint {self.name} made no progress for {self.supervisor.spec.hang_timeout:g}s; "
                                  "its worker was killed and is restarting", endpoint=self.name, detail=exc.detail)
        return exc

    async def health(self) -> HealthReport:
        sup = self.supervisor
        worker = {**sup.describe(), "device": self.device}
        if not sup.ready:
            return HealthReport(False, sup.detail, {"worker": worker})
        report = await super().health()
        report.data = {**report.data, "worker": worker}
        return report


def _source_root() -> str | None:
    """The directory holding this ``speech_router`` when it is not installed in site-packages."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    installed = {os.path.abspath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    return None if root in installed else root


def _local_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


@hookimpl(trylast=True)
def register_backends(register: RegisterBackend) -> None:
    register(IndexTts2LocalBackend)
