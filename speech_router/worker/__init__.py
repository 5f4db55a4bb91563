"""Worker processes that run a local engine on one device and speak index-tts-vllm v2's HTTP protocol.

``python -m speech_router.worker indextts2 --model-dir checkpoints --device cuda:0 --port 6006`` (or
``speech-router worker indextts2 ...``) serves one IndexTTS2 on one GPU. The ``indextts2-local``
backend starts one per device and supervises it (``supervisor.py``); on a GPU host of a fleet it
runs standalone and a router reaches it as an ``index-tts-vllm`` endpoint.

Only ``engine.py``, in the worker process, loads index-tts (and torch with it). This package's
``__init__`` and ``supervisor.py`` are imported by the router and import nothing heavy.

The worker tells its supervisor what it is doing with lines on stdout that start with ``MARKER``.
"""

from __future__ import annotations

MARKER = "speech-router worker: "
LISTENING = "listening on "  # + the base URL
READY = "ready"
LOAD_FAILED = "loading failed: "  # + the reason, one line
EXIT_LOAD_FAILED = 3  # exit status after a load failure with --exit-on-load-failure
EXIT_HUNG = 4  # exit status of the standalone watchdog (--hang-timeout)
EXIT_ORPHANED = 5  # the parent process went away
DEFAULT_WARMUP_TEXT = "Warming up."

__all__ = ["DEFAULT_WARMUP_TEXT", "EXIT_HUNG", "EXIT_LOAD_FAILED", "EXIT_ORPHANED", "LISTENING", "LOAD_FAILED",
           "MARKER", "READY"]
