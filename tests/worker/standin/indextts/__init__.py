"""A CPU stand-in for github index-tts/index-tts's ``indextts`` package (tests only; no torch, no weights)."""
