"""Where a problem is in a config file: dotted locations (``pools.gpu.endpoints[1].url``) and their lines.

The loader reports every issue by its location in the parsed tree; ``YamlLines`` maps that location back to a
line of the YAML text (``yamlfile.locate`` adds lines to issues found after loading).
"""

from __future__ import annotations

import re
from typing import Any

import yaml


def format_loc(loc: tuple[Any, ...]) -> str:
    """``("pools", "gpu", "endpoints", 1, "url")`` -> ``pools.gpu.endpoints[1].url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_LOC_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def parse_loc(loc: str) -> tuple[Any, ...]:
    """``pools.gpu.endpoints[1].url`` -> ``("pools", "gpu", "endpoints", 1, "url")`` (``format_loc``'s inverse)."""
    return tuple(int(index) if index else name for index, name in _LOC_PART.findall(loc))



class YamlLines:
    """Maps a location in the parsed YAML back to its line number, using the composed node tree."""

    def __init__(self, text: str, offset: int = 0) -> None:
        self.offset = offset  # lines of the file before the config's first (a ConfigMap's)
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None

    def line(self, loc: tuple[Any, ...]) -> int | None:
        node, best = self.root, None
        for part in loc:
            if node is None:
                break
            best = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == str(part)]
                if not match:
                    break
                key, node = match[0]
                best = key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                best = node.start_mark.line + 1
            else:
                break
        return best + self.offset if best is not None else None
