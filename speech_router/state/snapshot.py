"""What one replica learned of the fleet, as bytes for the store and back, checked: what another replica (or
anything else holding the key) wrote can never put a NaN, a negative speed or a huge list into a model.

One JSON document per replica: when it was taken (wall clock), each pool's latency shape, each endpoint's
model (``router.model.ModelSnapshot``), keyed by ``pool/endpoint`` with the pool's backend type.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, TypeGuard

from ..router.latency import ShapeSnapshot
from ..router.model import MAX_CANDIDATES, ModelSnapshot

VERSION = 1
#: a document larger than this is not read (a fleet of a thousand endpoints needs far less)
MAX_BYTES = 4 * 1024 * 1024
#: the plausible range of a speed against the pool's shape, and of its logarithm (centers, history): beyond it a value
#: is not a measurement (and could overflow what is computed from it)
LEVELS = (1e-6, 1e6)
LOGS = (-50.0, 50.0)
#: fading sums (errors, evidence) and the shape's sums stay far below this
MAX_SUM = 1e15


@dataclass(frozen=True)
class Knowledge:
    """One replica's document: shapes by pool, models by ``pool/endpoint``, each with its backend type."""

    taken: float
    shapes: dict[str, tuple[str, ShapeSnapshot]]
    models: dict[str, tuple[str, ModelSnapshot]]


def encode(knowledge: Knowledge) -> bytes:
    return json.dumps({
        "v": VERSION, "taken": knowledge.taken,
        "shapes": {pool: {"type": kind, **asdict(shape)} for pool, (kind, shape) in knowledge.shapes.items()},
        "models": {key: {"type": kind, **asdict(model)} for key, (kind, model) in knowledge.models.items()},
    }, separators=(",", ":")).encode()


def decode(raw: bytes, now_wall: float | None = None) -> Knowledge | None:
    """The document in ``raw``, its ages moved on by the time since it was taken; None when it is not one.
    Entries that do not check out are left out, one by one."""
    if len(raw) > MAX_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("v") != VERSION or not _number(data.get("taken")):
        return None
    now_wall = time.time() if now_wall is None else now_wall
    since = max(0.0, now_wall - float(data["taken"]))  # taken in the future (another host's clock): taken now
    shapes = {pool: shape for pool, entry in _mapping(data.get("shapes")).items()
              if (shape := _shape(entry)) is not None}
    models = {key: model for key, entry in _mapping(data.get("models")).items()
              if (model := _model(entry, since)) is not None}
    return Knowledge(float(data["taken"]), shapes, models)


def _mapping(value: Any) -> dict[str, Any]:
    return {k: v for k, v in value.items() if isinstance(k, str)} if isinstance(value, dict) else {}


def _number(value: object, low: float = 0.0, high: float = MAX_SUM) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _shape(entry: object) -> tuple[str, ShapeSnapshot] | None:
    if not isinstance(entry, dict) or not isinstance(kind := entry.get("type"), str) \
            or not _count(samples := entry.get("samples")):
        return None
    names = ("sw", "sx", "sy", "sxx", "sxy")
    sums = [float(v) for k in names if _number(v := entry.get(k))]
    if len(sums) != len(names):
        return None
    return kind, ShapeSnapshot(samples, *sums)


def _model(entry: object, since: float) -> tuple[str, ModelSnapshot] | None:
    if not isinstance(entry, dict) or not isinstance(kind := entry.get("type"), str):
        return None
    levels, centers, errors = (entry.get(k) for k in ("levels", "centers", "errors"))
    if not (isinstance(levels, list) and isinstance(centers, list) and isinstance(errors, list)
            and 1 <= len(levels) <= MAX_CANDIDATES and len(levels) == len(centers) == len(errors)):
        return None
    if not (all(_number(v, *LEVELS) for v in levels) and all(_number(v, *LOGS) for v in centers)
            and all(_number(v) for v in errors)):
        return None
    best = entry.get("best")
    if not (_count(best) and best < len(levels) and _count(entry.get("informative")) and _count(entry.get("answers"))
            and _number(entry.get("evidence")) and _number(entry.get("history"), *LOGS)):
        return None
    ages = [entry.get(k) for k in ("answered_age", "heard_age")]
    last = entry.get("last_seconds")
    if not all(v is None or _number(v) for v in [*ages, last]):
        return None
    answered, heard = (None if v is None else float(v) + since for v in ages)
    return kind, ModelSnapshot(
        tuple(float(v) for v in levels), tuple(float(v) for v in centers), tuple(float(v) for v in errors), best,
        entry["informative"], float(entry["evidence"]), entry["answers"], float(entry["history"]), answered, heard,
        None if last is None else float(last))
