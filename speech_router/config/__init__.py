"""Configuration: the schema (``models``) and how YAML or the environment becomes ``Settings`` (``loader``)."""

from .loader import load_file, load_settings, settings_from_dict
from .models import EndpointConfig, ModelConfig, PoolConfig, Settings, VoiceConfig

__all__ = ["EndpointConfig", "ModelConfig", "PoolConfig", "Settings", "VoiceConfig", "load_file", "load_settings",
           "settings_from_dict"]
