"""Realtime speech (#19): text streamed in over a WebSocket (an LLM's tokens), audio streamed out, across the fleet.

``WS /v1/audio/speech/stream`` speaks vllm-omni's protocol (``protocol``); each sentence is cut as soon as it
is complete (``text``) and synthesized through the routing core like a fan-out segment (``pipeline``), and the
audio goes back in order (``session``). ``route`` checks the client and the session limits.
"""

from __future__ import annotations
