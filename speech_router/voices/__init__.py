"""Voices uploaded through the router (``POST /v1/audio/voices``), usable on every backend type.

``audio``: check an upload and make it a mono WAV reference; ``store``: keep it by content hash in a
directory every replica (and the index-tts-vllm nodes) can read; ``params``: what it is to each
backend type; ``digest``: a reference file's content hash, for cache keys; ``form``: the multipart
upload, bounded. Uploading voices to vllm-omni nodes is the fleet's business: ``speech_router.voice_sync``.
"""
