"""Turn YAML (or the environment) into validated ``Settings``, with every error located.

Three sources, in order: a config file; ``TTS_REMOTE_URL`` (the seed's one-liner deploy); the
embedded default (the in-process espeak engine), so ``speech-router serve`` works out of the box.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, ConfigIssue
from .datadir import default_voice_directory
from .locations import YamlLines, format_loc
from .messages import did_you_mean, user_message
from .models import DEFAULT_VOICE_DIR, STATE_URL_ENV, PoolConfig, Settings, StateConfig, VoiceConfig
from .yamlfile import config_text, duplicate_keys

log = logging.getLogger(__name__)

_VAR = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: model names the env and embedded configs answer to, so OpenAI clients work unchanged
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: without a config file: where long-form jobs are kept (unset: jobs are off)
JOBS_DIR_VARIABLE = "SPEECH_ROUTER_JOBS_DIR"

#: a problem found in the raw tree: where (its keys and indexes) and what
Issue = tuple[tuple[Any, ...], str]


def expand_env(value: Any, env: Mapping[str, str], loc: tuple[Any, ...] = (), issues: list[Issue] | None = None) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal ``$``."""
    if issues is None:
        issues = []
    if isinstance(value, dict):
        return {k: expand_env(v, env, (*loc, k), issues) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, (*loc, i), issues) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name, default = m.group(2), m.group(3)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        issues.append((loc, f"environment variable {name} is not set"))
        return ""

    return _VAR.sub(repl, value)


def load_settings(path: str | os.PathLike[str] | None = None, *, registry: Any = None,
                  env: Mapping[str, str] | None = None, host_checks: bool = False) -> Settings:
    """Load the config from ``path``, else from ``TTS_REMOTE_URL``, else the embedded default.

    ``host_checks``: also what this host must have (``checks.host_issues``), reported with the rest.
    """
    env = os.environ if env is None else env
    if path is not None:
        return load_file(path, registry=registry, env=env, host_checks=host_checks)
    if env.get("TTS_REMOTE_URL", "").strip():
        return settings_from_dict(_with_jobs(remote_config(env), env), registry=registry, env=env,
                                  source="TTS_REMOTE_URL", host_checks=host_checks)
    return settings_from_dict(_with_jobs(embedded_config(), env), registry=registry, env=env,
                              source="embedded default", host_checks=host_checks)


def _with_jobs(config: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Without a config file, ``SPEECH_ROUTER_JOBS_DIR`` turns long-form jobs on (a file sets ``jobs.directory``)."""
    directory = env.get(JOBS_DIR_VARIABLE, "").strip()
    return {**config, "jobs": {"directory": directory}} if directory else config


def load_file(path: str | os.PathLike[str], *, registry: Any = None, env: Mapping[str, str] | None = None,
              host_checks: bool = False) -> Settings:
    """A config file, or a Kubernetes ConfigMap holding one (its ``data.config.yaml``)."""
    source = str(path)
    try:
        found = config_text(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config: {exc.strerror or exc}")], source=source) from None
    except ValueError as exc:
        raise ConfigError([ConfigIssue("", str(exc))], source=source) from None
    try:
        data = yaml.safe_load(found.text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 + found.offset if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"invalid YAML: {problem}", line)], source=source) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "the config must be a mapping with pools and models")], source=source)
    return settings_from_dict(data, registry=registry, env=env, source=source,
                              lines=YamlLines(found.text, found.offset), host_checks=host_checks,
                              found=duplicate_keys(found.text, found.offset))


def settings_from_dict(data: dict[str, Any], *, registry: Any = None, env: Mapping[str, str] | None = None,
                       source: str = "", lines: YamlLines | None = None, host_checks: bool = False,
                       found: list[ConfigIssue] | None = None) -> Settings:
    """Validate a config tree. Raises ``ConfigError`` listing every problem once, with its location:
    ``found`` (the file's own, such as repeated keys), the schema's, and with ``host_checks`` this host's."""
    env = os.environ if env is None else env
    unset: list[tuple[tuple[Any, ...], str]] = []
    data = expand_env(data, env, (), unset)
    raw = _once_per_variable(unset)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            raw.append((tuple(err["loc"]), user_message(err, Settings)))
    raw.extend(check_references(data, registry))
    if settings is not None:
        raw.extend(_name_endpoints(settings))
    if settings is not None and not settings.voice_store.directory:
        settings.voice_store.directory = default_voice_directory(source, env)
    if settings is not None and settings.state.url is None and env.get(STATE_URL_ENV, "").strip():
        raw.extend(_state_url_from_env(settings, env[STATE_URL_ENV]))
    if host_checks:
        from .checks import host_issues  # reads audio files: not imported by every loader

        raw.extend(host_issues(data, env, source=source))
    raw = _without_follow_ons(raw, [loc for loc, _ in unset])
    if raw or found:
        issues = [*(found or []),
                  *(ConfigIssue(format_loc(loc), msg, lines.line(loc) if lines else None) for loc, msg in raw)]
        issues.sort(key=lambda issue: issue.line or 0)
        raise ConfigError(issues, source=source)
    assert settings is not None
    settings.source = source
    return settings


def _state_url_from_env(settings: Settings, url: str) -> list[tuple[tuple[Any, ...], str]]:
    """``state.url`` from ``SPEECH_ROUTER_STATE_URL`` when the file names none (never echoing it: it may hold a
    password)."""
    try:
        settings.state = StateConfig.model_validate({**settings.state.model_dump(), "url": url.strip()})
    except ValidationError as exc:
        return [(("state", "url"), f"{STATE_URL_ENV}: " + user_message(exc.errors(include_url=False)[0]))]
    return []


def _once_per_variable(unset: list[tuple[tuple[Any, ...], str]]) -> list[tuple[tuple[Any, ...], str]]:
    """An unset variable is one problem, however many places use it: reported where it is first used."""
    first: dict[str, tuple[Any, ...]] = {}
    count: dict[str, int] = {}
    for loc, msg in unset:
        first.setdefault(msg, loc)
        count[msg] = count.get(msg, 0) + 1
    return [(loc, msg + (f" (also used in {count[msg] - 1} more place{'s' if count[msg] > 2 else ''})"
                         if count[msg] > 1 else "")) for msg, loc in first.items()]


def _without_follow_ons(raw: list[tuple[tuple[Any, ...], str]],
                        unset: list[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], str]]:
    """Each problem once: exact repeats go, and so do complaints about a value an unset variable emptied."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for loc, msg in raw:
        if (loc, msg) in out:
            continue
        if not msg.startswith("environment variable") and any(loc[:len(u)] == u for u in unset):
            continue
        out.append((loc, msg))
    return out


def _dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def check_references(data: dict[str, Any], registry: Any) -> list[Issue]:
    """Checks that span fields: routes name pools, types exist, options fit the type, endpoint URLs fit the
    type, voice keys are known.

    They read the raw tree, so they run (and report) even when other parts of the file are invalid.
    """
    issues: list[tuple[tuple[Any, ...], str]] = []
    pools, models, voice_names = _dict(data.get("pools")), _dict(data.get("models")), _dict(data.get("voices"))
    for model, route in models.items():
        substitute = route.get("fallback_voice") if isinstance(route, dict) else None
        if isinstance(substitute, str) and substitute not in voice_names:
            issues.append((("models", model, "fallback_voice"),
                           f"unknown voice {substitute!r}{did_you_mean(substitute, voice_names)} (a configured voice)"))
        names = route.get("pools") if isinstance(route, dict) else route
        names = [names] if isinstance(names, str) else names
        for i, pool in enumerate(names if isinstance(names, list) else []):
            if isinstance(pool, str) and pool not in pools:
                loc = ("models", model, "pools", i) if isinstance(route, dict) else ("models", model, i)
                issues.append((loc, f"unknown pool {pool!r}{did_you_mean(pool, pools)}"))
    if registry is None:
        return issues
    for name, pool in pools.items():
        if isinstance(pool, dict) and isinstance(pool.get("type"), str):
            issues.extend(_check_pool(name, pool, registry))
    voice_keys = {key for cls in registry.types.values() for key in cls.capabilities.voice_keys}
    for voice, cfg in voice_names.items():
        for key in cfg if isinstance(cfg, dict) else ():
            if key not in voice_keys and key not in VoiceConfig.model_fields:
                known = ", ".join(sorted(voice_keys))
                issues.append((("voices", voice, key),
                               f"unknown voice parameter{did_you_mean(key, voice_keys) or f' (known: {known})'}"))
    return issues


def _check_pool(name: str, pool: dict[str, Any], registry: Any) -> list[tuple[tuple[Any, ...], str]]:
    """One pool against its backend type: the type exists, its options fit, its endpoints' URLs fit."""
    issues: list[tuple[tuple[Any, ...], str]] = []
    kind = pool["type"]
    backend_cls = registry.types.get(kind)
    if backend_cls is None:
        known = ", ".join(sorted(registry.types)) or "none"
        hint = did_you_mean(kind, registry.types) or f" (known: {known})"
        return [(("pools", name, "type"), f"unknown backend type {kind!r}{hint}")]
    common = set(PoolConfig.model_fields)
    try:
        backend_cls.Options.model_validate({k: v for k, v in pool.items() if k not in common})
    except ValidationError as exc:
        issues.extend((("pools", name, *err["loc"]), user_message(err, backend_cls.Options, common))
                      for err in exc.errors(include_url=False))
    endpoints = pool.get("endpoints") or []
    misspelt = any(did_you_mean(key, ["endpoints"]) for key in pool if key not in common)
    if backend_cls.capabilities.needs_url and isinstance(endpoints, list):
        if not endpoints and not misspelt:  # a misspelt `endpoints` was reported as an unknown key
            issues.append((("pools", name, "endpoints"), f"type {kind!r} needs at least one endpoint"))
        seen: dict[str, int] = {}
        for i, ep in enumerate(endpoints):
            if isinstance(ep, dict) and not ep.get("url"):
                issues.append((("pools", name, "endpoints", i, "url"), f"required for type {kind!r}"))
            elif isinstance(ep, dict) and isinstance(ep["url"], str):
                problem = _url_shape(ep["url"], kind, backend_cls.capabilities.request_paths)
                if problem:
                    issues.append((("pools", name, "endpoints", i, "url"), problem))
                elif (first := seen.setdefault(_same_node(ep["url"]), i)) != i:
                    issues.append((("pools", name, "endpoints", i, "url"), f"the same URL as endpoints[{first}]: "
                                   "a node listed twice in a pool gets twice its share of requests"))
    return issues


def _same_node(url: str) -> str:
    """A URL as the node it reaches: scheme and host in any case, with or without a trailing slash."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}?{parts.query}"


def _url_shape(url: str, kind: str, request_paths: tuple[str, ...]) -> str | None:
    """A URL that already ends with a path the backend adds itself (``/tts_url``) cannot work."""
    from urllib.parse import urlsplit

    path = urlsplit(url).path.rstrip("/")
    for suffix in request_paths:
        if path.endswith(suffix):
            base = url.rstrip("/")[: -len(suffix)] or url
            return (f"the URL ends with {suffix}, which the router adds itself: type {kind!r} takes the "
                    f"endpoint's base URL ({base})")
    return None


def _name_endpoints(settings: Settings) -> list[tuple[tuple[Any, ...], str]]:
    """Give every endpoint a unique name: its ``host:port``, or ``pool-N`` for in-process engines."""
    from urllib.parse import urlsplit

    issues: list[tuple[tuple[Any, ...], str]] = []
    seen: set[str] = set()
    for pool_name, pool in settings.pools.items():
        for i, ep in enumerate(pool.endpoints):
            if ep.name is None:
                base = urlsplit(ep.url).netloc.rpartition("@")[2] if ep.url else f"{pool_name}-{i}"  # no credentials
                ep.name = base if base not in seen else f"{pool_name}/{base}"
            if ep.name in seen:
                issues.append((("pools", pool_name, "endpoints", i, "name"), f"duplicate endpoint name {ep.name!r}"))
            seen.add(ep.name)
    return issues


def remote_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The seed's deploy: ``TTS_REMOTE_URL`` (one URL or a comma-separated list) becomes one pool."""
    urls = [u.strip() for u in env["TTS_REMOTE_URL"].split(",") if u.strip()]
    models = {name: ["remote"] for name in ("indextts2", *OPENAI_MODEL_NAMES)}
    return {
        "pools": {"remote": {"type": "index-tts-vllm", "endpoints": [{"url": u} for u in urls]}},
        "models": models,
        "voice_dir": {"path": env.get("TTS_VOICE_DIR", DEFAULT_VOICE_DIR)},
    }


def embedded_config() -> dict[str, Any]:
    """No config and no ``TTS_REMOTE_URL``: the in-process espeak engine serves every model name the other
    sources do (the OpenAI ones and ``indextts2``), so a client written for a GPU fleet runs against it."""
    return {
        "pools": {"embedded": {"type": "espeak"}},
        "models": {name: ["embedded"] for name in (*OPENAI_MODEL_NAMES, "indextts2", "espeak")},
        "voices": {
            name: {"espeak": voice}
            for name, voice in {
                "alloy": "en-us", "ash": "en-us+m3", "ballad": "en-gb", "coral": "en-us+f3", "echo": "en-us+m1",
                "fable": "en-gb+m2", "nova": "en-us+f2", "onyx": "en-us+m7", "sage": "en-us+f4",
                "shimmer": "en-us+f1", "verse": "en-us+m2", "mandarin": "cmn",
            }.items()
        },
    }
