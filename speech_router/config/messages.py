"""Config errors in the user's words: pydantic's messages rephrased, and a "did you mean" for typos.

pydantic speaks of types ("Input should be a valid dictionary or instance of TimeoutConfig"); a person
editing YAML wants to hear what to write instead ("must be a mapping (keys: connect, read)").
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'endpoints'?)`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), sorted({str(c) for c in choices}), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_of(annotation: Any) -> Any:
    """The pydantic model, list or dict inside an annotation (``X | None`` unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model_of(args[0]) if len(args) == 1 else annotation
    return annotation


def keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys allowed at ``loc`` (a path below ``model``), or None when the path leaves known models."""
    current: Any = model
    for part in loc:
        current = _model_of(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif origin in (list, dict):
            current = typing.get_args(current)[-1]  # the index or the name is skipped
        else:
            return None
    current = _model_of(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


_EXPECTED = re.compile(r"'([^']*)'")


def user_message(err: ErrorDetails, root: type[BaseModel] | None = None, extra_keys: Iterable[str] = ()) -> str:
    """pydantic's error ``err`` (raised validating ``root``) in the user's words.

    ``extra_keys``: more keys allowed at the top of ``root`` (a pool's keys besides its backend's options).
    """
    kind, msg, loc = err["type"], str(err["msg"]), tuple(err["loc"])
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = keys_at(root, loc[:-1]) if root is not None else None
        if allowed is None:
            return "unknown key"
        allowed = [*allowed, *(extra_keys if len(loc) == 1 else ())]
        return "unknown key" + (did_you_mean(loc[-1], allowed) or f" (known: {', '.join(sorted(set(allowed)))})")
    if kind == "missing":
        return "required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        keys = keys_at(root, loc) if root is not None else None
        return "must be a mapping" + (f" (keys: {', '.join(keys)})" if keys else "") + f", not {_shown(given)}"
    if kind == "list_type":
        return f"must be a list, not {_shown(given)}"
    if kind in ("literal_error", "enum"):
        choices = _EXPECTED.findall(str(err.get("ctx", {}).get("expected", "")))
        return f"must be one of {', '.join(choices)}, not {_shown(given)}" + did_you_mean(given, choices)
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, not {_shown(given)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (seconds, for times), not {_shown(given)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, not {_shown(given)}"
    if kind == "too_short" and err.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    if kind == "string_type":
        return f"must be a string, not {_shown(given)}"
    return msg.removeprefix("Value error, ").replace("Input should be", "must be")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "empty"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
