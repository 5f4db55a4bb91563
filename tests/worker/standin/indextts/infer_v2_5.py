"""Stand-in for ``indextts.infer_v2_5.IndexTTS2`` (IndexTTS-2.5): its constructor and ``infer`` signature, no model.

As the real one: the constructor takes ``use_bf16`` (not ``use_fp16``) and loads the emotion-text model
only with ``use_qwen_emo=True`` (default False), so ``use_emo_text`` without it raises RuntimeError;
``infer`` needs ``lang`` and takes ``duration_factor`` (each sentence lasts that much longer) and
``text_normalization``. The tone, the streaming shape and the knobs are the 2.0 stand-in's.
"""

from __future__ import annotations

import os

import numpy as np

from .infer_v2 import RATE, _load, _log
from .infer_v2 import IndexTTS2 as _IndexTTS2V2


class IndexTTS2(_IndexTTS2V2):
    def __init__(self, cfg_path="checkpoints/config.yaml", model_dir="checkpoints", use_bf16=False, device=None,
                 use_cuda_kernel=None, use_deepspeed=False, use_accel=False, use_torch_compile=False,
                 use_qwen_emo=False):
        _log("init", version="2.5", cfg_path=cfg_path, model_dir=model_dir, use_bf16=use_bf16, device=device,
             use_cuda_kernel=use_cuda_kernel, use_torch_compile=use_torch_compile, use_qwen_emo=use_qwen_emo,
             cwd=os.getcwd())
        _load(cfg_path, model_dir)
        self.device = device or "cpu"
        self.qwen_emo = object() if use_qwen_emo else None
        self.model_version = 2.5

    def infer(self, spk_audio_prompt, text, output_path, lang, emo_audio_prompt=None, emo_alpha=1.0,
              emo_vector=None, use_emo_text=False, emo_text=None, use_random=False, interval_silence=200,
              verbose=False, max_text_tokens_per_segment=120, stream_return=False, more_segment_before=0,
              duration_factor=1.0, text_normalization=True, seed=None, diffusion_steps=25, inference_cfg_rate=0.7,
              cfm_temperature=1.0, **generation_kwargs):
        _log("infer", version="2.5", spk_audio_prompt=spk_audio_prompt, text=text, output_path=output_path,
             lang=lang, emo_audio_prompt=emo_audio_prompt, emo_alpha=emo_alpha, emo_vector=emo_vector,
             use_emo_text=use_emo_text, emo_text=emo_text, use_random=use_random,
             max_text_tokens_per_segment=max_text_tokens_per_segment, stream_return=stream_return,
             duration_factor=duration_factor, text_normalization=text_normalization,
             generation_kwargs=generation_kwargs)
        if use_emo_text and self.qwen_emo is None:
            raise RuntimeError("use_emo_text=True requires QwenEmotion, but it was not loaded at init "
                               "(use_qwen_emo=False). Re-construct IndexTTS2 with use_qwen_emo=True.")
        gen = self._generate(spk_audio_prompt, text, interval_silence, duration_factor)
        if stream_return:
            return gen
        wav = np.concatenate([t.data for t in gen], axis=1)
        return RATE, wav.astype(np.int16).T
