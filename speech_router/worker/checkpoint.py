"""Which IndexTTS a checkpoint directory holds: 2.0 (``indextts.infer_v2``) or 2.5 (``indextts.infer_v2_5``).

Read without torch, by the router (to know a local pool's capabilities before its worker loads) and
by the worker (to pick the module). What tells them apart, from index-tts's own loaders:

- ``config.yaml``'s ``version`` (IndexTTS-2 ships ``2.0``, IndexTTS-2.5 ``2.5``; ``infer_v2_5``
  reads it as ``model_version``);
- when that is missing: 2.5's semantic codec ``codec.pth`` (EnhancedCodec) and its multilingual
  tiktoken tokenizer (``*.tiktoken``), where 2.0 has ``bpe.model`` and fetches MaskGCT's codec.

``detect`` never raises: a directory it cannot read is taken as 2.0, with the reason.
"""

from __future__ import annotations

import os
import re
from typing import Literal

#: the IndexTTS versions speech-router tells apart
Version = Literal["2", "2.5"]

#: ``version: 2.5`` (or ``"2.5"``) at the top level of config.yaml
_VERSION_LINE = re.compile(r"""^version:\s*["']?(\d+(?:\.\d+)?)["']?\s*(?:#.*)?$""", re.MULTILINE)


def detect(model_dir: str, cfg_path: str | None = None) -> tuple[Version, str]:
    """(version, why) for the checkpoints in ``model_dir`` (config at ``cfg_path``, default model_dir/config.yaml)."""
    cfg = cfg_path or os.path.join(model_dir, "config.yaml")
    try:
        with open(cfg, encoding="utf-8") as f:
            match = _VERSION_LINE.search(f.read())
    except (OSError, UnicodeDecodeError):
        match = None
    if match:
        number = float(match.group(1))
        return ("2.5" if number >= 2.5 else "2"), f"config.yaml says version {match.group(1)}"
    try:
        names = set(os.listdir(model_dir))
    except OSError as exc:
        return "2", f"cannot read {model_dir} ({exc.strerror}); assuming IndexTTS-2"
    if "codec.pth" in names or any(n.endswith(".tiktoken") for n in names):
        return "2.5", "codec.pth / a .tiktoken tokenizer (IndexTTS-2.5's files)"
    return "2", "no version in config.yaml and no IndexTTS-2.5 files"
