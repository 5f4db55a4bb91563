"""Emulated TTS servers, shipped with the package: for the tests, the benchmarks and a local demo stack.

They run from an installed package or the image too (`python -m speech_router.emulator`), not only from a checkout.

- `index_tts_vllm.create_app(EmulatorConfig(api="v2"|"v1"))`: index-tts-vllm's api_server_v2.py / api_server.py.
- `openai_speech.create_app(OpenAIConfig())`: an OpenAI-compatible `/v1/audio/speech` server.
- `vllm_omni.create_app(VllmOmniConfig(version="2"|"2.5"))`: vllm-omni serving IndexTTS-2 or IndexTTS-2.5.
- `serve_in_thread(app)`: a real uvicorn server in a thread; `.url`, `.stop()`, `.start()`, `.restart()`.
- `python -m speech_router.emulator --api v2 --port 6006 --nodes 4`: a fleet for operators and bench.

Each app keeps its knobs, request log and counters at `app.state.emulator` (an `EmulatorState`).
"""

from __future__ import annotations

from speech_router.emulator.index_tts_vllm import EmulatorConfig
from speech_router.emulator.openai_speech import OpenAIConfig
from speech_router.emulator.serve import ServerHandle, serve_fleet, serve_in_thread
from speech_router.emulator.state import EmulatorState
from speech_router.emulator.vllm_omni_speech import VllmOmniConfig

__all__ = ["EmulatorConfig", "EmulatorState", "OpenAIConfig", "ServerHandle", "VllmOmniConfig", "serve_fleet",
           "serve_in_thread"]
