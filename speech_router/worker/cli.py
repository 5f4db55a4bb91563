"""``speech-router worker indextts2 ...`` (or ``python -m speech_router.worker indextts2 ...``).

Serves one IndexTTS2 on one device over index-tts-vllm v2's HTTP protocol. The socket is bound
first, so ``/health`` answers (503, "loading ...") while the model loads in the background.
Progress goes to stdout as ``speech-router worker: ...`` lines, which the supervising backend reads.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from . import DEFAULT_WARMUP_TEXT, EXIT_LOAD_FAILED, EXIT_ORPHANED, LISTENING, LOAD_FAILED, MARKER, READY

DEFAULT_PORT = 6006  # index-tts-vllm's
DEFAULT_HOST = "127.0.0.1"
GRACEFUL_SHUTDOWN_S = 5
PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 1.0


def build_parser(prog: str = "speech-router worker") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a local TTS engine on one device over index-tts-"
                                                            "vllm v2's HTTP protocol (POST /tts_url, GET /health).")
    sub = parser.add_subparsers(dest="engine", required=True)
    p = sub.add_parser("indextts2", help="IndexTTS2 (github index-tts/index-tts), installed in this interpreter")
    p.add_argument("--model-dir", required=True, help="the IndexTTS-2 checkpoints directory")
    p.add_argument("--cfg-path", default=None, help="default: MODEL_DIR/config.yaml")
    p.add_argument("--device", default="cuda:0", help="torch device, e.g. cuda:0 (default), cuda:1, cpu")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}; 0.0.0.0 to serve a fleet router")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port")
    p.add_argument("--model-version", choices=["auto", "2", "2.5"], default="auto",
                   help="IndexTTS-2 (indextts.infer_v2) or IndexTTS-2.5 (indextts.infer_v2_5); default: read from "
                        "the checkpoint (config.yaml's version, or 2.5's codec.pth / tokenizer)")
    p.add_argument("--fp16", action="store_true", help="half precision (less memory, faster); bf16 on IndexTTS-2.5")
    p.add_argument("--bf16", action="store_true", help="IndexTTS-2.5: bfloat16 weights (use_bf16)")
    p.add_argument("--cuda-kernel", action="store_true", help="BigVGAN's fused CUDA kernel (needs a CUDA toolchain)")
    p.add_argument("--torch-compile", action="store_true", help="torch.compile (newer index-tts only)")
    p.add_argument("--engine-kwargs", type=json.loads, default={}, metavar="JSON",
                   help="more IndexTTS2() arguments as a JSON object, e.g. '{\"use_deepspeed\": true}'")
    p.add_argument("--max-queue", type=int, default=4, help="requests waiting behind the running one (default 4)")
    p.add_argument("--warmup-text", default=None, help="text of the warm-up synthesis ('' to skip)")
    p.add_argument("--warmup-voice", default=None, help="speaker reference for the warm-up (default: synthetic)")
    p.add_argument("--workdir", default=None, help="working directory; index-tts keeps ./checkpoints/hf_cache "
                                                   "there (default: the parent of MODEL_DIR)")
    p.add_argument("--hang-timeout", type=float, default=0.0,
                   help="exit when a synthesis makes no progress this long, for a process manager to restart "
                        "(default 0: off)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process goes away")
    p.add_argument("--exit-on-load-failure", action="store_true",
                   help=f"exit with status {EXIT_LOAD_FAILED} when loading fails instead of reporting it in /health")
    p.add_argument("--log-level", default="info")
    return parser


def announce(message: str) -> None:
    """A progress line for the supervisor (and the operator) on stdout."""
    print(f"{MARKER}{message}", flush=True)


def die_with_parent(parent_pid: int) -> None:
    """Never outlive the router: PR_SET_PDEATHSIG on Linux, and a parent-pid watchdog everywhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort: the watchdog below still runs
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_ORPHANED)
            time.sleep(PARENT_POLL_S)

    if os.getppid() != parent_pid:  # it died before prctl
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def main(argv: Sequence[str] | None = None, prog: str = "speech-router worker") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from .app import WorkerState, create_app
    from .engine import EngineConfig, IndexTts2Engine

    model_dir = os.path.abspath(args.model_dir)
    config = EngineConfig(
        model_dir=model_dir, cfg_path=os.path.abspath(args.cfg_path) if args.cfg_path else None, device=args.device,
        version=args.model_version, fp16=args.fp16, bf16=args.bf16, use_cuda_kernel=args.cuda_kernel,
        use_torch_compile=args.torch_compile,
        engine_kwargs=args.engine_kwargs,
        warmup_text=DEFAULT_WARMUP_TEXT if args.warmup_text is None else args.warmup_text,
        warmup_voice=os.path.abspath(args.warmup_voice) if args.warmup_voice else None)
    os.chdir(os.path.abspath(args.workdir) if args.workdir else os.path.dirname(model_dir))

    def on_ready(state: WorkerState) -> None:
        announce(f"{READY} (loaded in {state.loaded_in:.1f}s on {config.device})")

    def on_failed(state: WorkerState) -> None:
        announce(LOAD_FAILED + " ".join(str(state.load_error).split()))
        if args.exit_on_load_failure:
            sys.stderr.flush()
            os._exit(EXIT_LOAD_FAILED)

    state = WorkerState(IndexTts2Engine(config), max_queue=args.max_queue, hang_timeout=args.hang_timeout,
                        on_ready=on_ready, on_failed=on_failed)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    announce(f"{LISTENING}http://{f'[{host}]' if ':' in host else host}:{port}")
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", access_log=False, ws="none",
                                           lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    server.run(sockets=[sock])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for an engine thread that may be stuck in a kernel


if __name__ == "__main__":
    sys.exit(main())
