"""`python -m speech_router.emulator`: run a fleet of emulated nodes until Ctrl+C.

Knobs can be changed on a running node with `POST /_emulator/config` (JSON of knob names to values),
read with `GET /_emulator/state`, and its log cleared with `POST /_emulator/reset`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from starlette.applications import Starlette

from speech_router.emulator import index_tts_vllm, openai_speech, vllm_omni
from speech_router.emulator.serve import serve_fleet


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m speech_router.emulator", description=__doc__)
    p.add_argument("--api", choices=["v2", "v1", "openai", "vllm-omni"], default="v2",
                   help="protocol to speak (default v2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6006, help="first port; node i listens on port+i (0: free ports)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--name-prefix", default="node", help="nodes are named <prefix>0, <prefix>1, ...")
    p.add_argument("--delay", type=float, default=0.0, help="fixed synthesis latency, seconds")
    p.add_argument("--delay-per-char", type=float, default=0.0, help="extra latency per character, seconds")
    p.add_argument("--slots", type=int, default=None, help="concurrent syntheses per node (default unlimited)")
    p.add_argument("--speakers", type=Path, default=None, help="v1: a speaker.json to serve ({name: [paths]})")
    p.add_argument("--api-key", default=None, help="openai, vllm-omni: require this bearer key")
    p.add_argument("--model", default=None, help="vllm-omni: the served model name")
    p.add_argument("--omni-version", choices=["2", "2.5"], default="2", help="vllm-omni: IndexTTS-2 or IndexTTS-2.5")
    p.add_argument("--allowed-media-path", default=None, help="vllm-omni: the directory file:// references may use")
    return p


def build_apps(args: argparse.Namespace) -> list[Starlette]:
    """One app per node, configured from the command line."""
    apps = []
    for i in range(args.nodes):
        knobs = {
            "name": f"{args.name_prefix}{i}",
            "delay_s": args.delay,
            "delay_per_char_s": args.delay_per_char,
            "slots": args.slots,
        }
        if args.api == "vllm-omni":
            omni = vllm_omni.VllmOmniConfig(api_key=args.api_key, version=args.omni_version,
                                            allowed_media_path=args.allowed_media_path, **knobs)
            if args.model:
                omni.model = args.model
            apps.append(vllm_omni.create_app(omni))
            continue
        if args.api == "openai":
            apps.append(openai_speech.create_app(openai_speech.OpenAIConfig(api_key=args.api_key, **knobs)))
            continue
        config = index_tts_vllm.EmulatorConfig(api=args.api, **knobs)
        if args.speakers is not None:
            config.speakers = json.loads(args.speakers.read_text(encoding="utf-8"))
        apps.append(index_tts_vllm.create_app(config))
    return apps


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    apps = build_apps(args)
    with serve_fleet(apps, args.host, args.port) as handles:
        for app, handle in zip(apps, handles, strict=True):
            print(f"{app.state.emulator.config.name} ({args.api}): {handle.url}", flush=True)
        while not done.wait(0.5):
            pass


if __name__ == "__main__":
    main()
