"""Reading a config file's YAML: what the parser forgives and the schema never sees.

- A key written twice in one mapping: PyYAML keeps the last value silently (a pool written twice loses
  the first), so every repeat is an error that names both lines.
- A Kubernetes ConfigMap holding the config (``deploy/kubernetes/configmap.yaml``, the file docs/deploy.md
  says to check): its ``data`` key ``config.yaml`` is the config, and its lines are counted in the ConfigMap
  file, so every error points at the line the user edits.

``locate`` gives the lines to issues found after loading (client keys, the host checks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ConfigIssue
from .locations import YamlLines, format_loc, parse_loc

#: the data key a ConfigMap holds the config in (deploy/kubernetes mounts it as /etc/speech-router/config.yaml)
CONFIGMAP_KEY = "config.yaml"


@dataclass(frozen=True)
class ConfigText:
    """The config's YAML text and how many lines of the file come before its first line."""

    text: str
    offset: int = 0


def config_text(text: str) -> ConfigText:
    """``text`` itself, or the config inside it when it is a ConfigMap; ``ValueError`` for a ConfigMap
    without the config key. Invalid YAML comes back unchanged (the loader reports it)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return ConfigText(text)
    if not isinstance(root, yaml.MappingNode) or _scalar(_get(root, "kind")) != "ConfigMap":
        return ConfigText(text)
    data = _get(root, "data")
    node = _get(data, CONFIGMAP_KEY) if isinstance(data, yaml.MappingNode) else None
    inner = _scalar(node)
    if node is None or inner is None:
        keys = [k.value for k, _ in data.value] if isinstance(data, yaml.MappingNode) else []
        raise ValueError(f"a ConfigMap without data.{CONFIGMAP_KEY}, which holds the router's config "
                         f"(its data keys: {', '.join(keys) or 'none'})")
    # a block scalar (`config.yaml: |`) starts on the line after its indicator
    offset = node.start_mark.line + (1 if node.style in ("|", ">") else 0)
    return ConfigText(inner, offset)


def duplicate_keys(text: str, offset: int = 0) -> list[ConfigIssue]:
    """Every key repeated in one mapping, at the repeat's line, naming the line it repeats."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    issues: list[ConfigIssue] = []
    _walk(root, (), offset, issues)
    return issues


def _walk(node: Any, loc: tuple[Any, ...], offset: int, issues: list[ConfigIssue]) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1 + offset
            if name in first and name != "<<":
                issues.append(ConfigIssue(format_loc((*loc, name)), f"duplicate key {name!r}: also on line "
                                          f"{first[name]}; YAML keeps only the last, so that one is ignored", line))
            first.setdefault(name, line)
            _walk(value, (*loc, name), offset, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), offset, issues)


def _get(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _scalar(node: Any) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) else None


def locate(exc: ConfigError, path: str | os.PathLike[str] | None) -> ConfigError:
    """``exc`` with a line for each of its issues in ``path`` that has none (issues found after loading)."""
    if path is None or exc.source not in ("", str(path)):
        return exc
    try:
        found = config_text(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return exc
    lines = YamlLines(found.text, found.offset)
    issues = [ConfigIssue(i.loc, i.message, i.line if i.line or not i.loc else lines.line(parse_loc(i.loc)))
              for i in exc.issues]
    return ConfigError(sorted(issues, key=lambda issue: issue.line or 0), source=str(path))
