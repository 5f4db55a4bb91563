"""What an uploaded voice is to each backend type: its voice parameters, from the stored record.

One set of parameters serves every type a route may reach:

- ``spk_audio_path``: ``<node_directory>/audio/<sha256>.wav``, the file as index-tts-vllm nodes see the
  shared directory (and a local worker: with an ``indextts2-local`` pool, ``node_directory`` must be
  where the router host sees it too, which the default, ``directory`` itself, is); vllm-omni nodes
  read it as ``file://`` when their pool's ``allowed_media_path`` covers it;
- ``ref_audio_file`` (``vllm_omni: inline``, the default): the file on the router's host, sent to
  vllm-omni nodes inline as a ``data:`` URL, which every node can use at once;
- ``uploaded_voice`` (``vllm_omni: upload``): the name the router uploaded it under to every vllm-omni
  node (``sr-`` and the start of its hash: content-addressed, so a new reference is a new node voice).
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..config.models import Settings, VoiceStoreConfig
from .store import VoiceRecord, store_for

#: the prefix of the node-side names the router gives the voices it uploads (and may delete)
NODE_PREFIX = "sr-"
NODE_HASH_CHARS = 24


def node_voice_name(sha256: str) -> str:
    """The name a reference is uploaded to vllm-omni nodes under."""
    return f"{NODE_PREFIX}{sha256[:NODE_HASH_CHARS]}"


def is_router_voice(node_name: str) -> bool:
    """Whether a voice on a node is one the router uploaded (and so may replace or delete)."""
    rest = node_name.lower().removeprefix(NODE_PREFIX)
    return node_name.lower().startswith(NODE_PREFIX) and len(rest) == NODE_HASH_CHARS and \
        all(c in "0123456789abcdef" for c in rest)


def node_path(record: VoiceRecord, config: VoiceStoreConfig) -> str:
    """The reference as the nodes (and local workers) see it."""
    root = config.node_directory or config.directory
    return posixpath.join(root, store_for(config.directory).relative_audio_path(record.sha256))


def voice_params(record: VoiceRecord, config: VoiceStoreConfig) -> dict[str, Any]:
    """The voice parameters of an uploaded voice, for every backend type (see the module's docstring)."""
    params: dict[str, Any] = {"spk_audio_path": node_path(record, config)}
    if config.vllm_omni == "upload":
        params["uploaded_voice"] = node_voice_name(record.sha256)
    else:
        params["ref_audio_file"] = str(store_for(config.directory).audio_path(record.sha256))
    return params


def uploaded_voice(settings: Settings, name: str) -> VoiceRecord | None:
    """The uploaded voice called ``name`` (any case), None when there is none or uploads are off."""
    config = settings.voice_store
    if not config.enabled or any(name.lower() == configured.lower() for configured in settings.voices):
        return None  # a configured voice owns its name in any case
    return store_for(config.directory).get(name)


def uploaded_params(settings: Settings, name: str) -> dict[str, Any] | None:
    """The parameters of uploaded voice ``name``; None when there is none (a voice from YAML wins anyway)."""
    record = uploaded_voice(settings, name)
    return None if record is None else voice_params(record, settings.voice_store)
