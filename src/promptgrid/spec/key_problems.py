"""A spec's key problems as pydantic finds them, said as promptgrid says them, and the keys left without them.

Each problem names its key (and its line, where the spec has lines). The keys left once the bad ones are
dropped go on to the later checks (models, grid, templates), so a misspelt key does not hide the value
problems behind it: every problem is reported in one go.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from promptgrid.spec.schema import ApiConfig, SpecKeys
from promptgrid.spec.sources import where

# The keys each section of a spec knows, for "did you mean" on a misspelt one.
_SECTION_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): tuple(SpecKeys.model_fields),
    ("api",): tuple(ApiConfig.model_fields),
}
# Keys without which no later check can run: they name the models.
_NEEDED = frozenset({"model"})
_PRUNE_ROUNDS = 3  # a dropped key's default may fail a check of its own (e.g. zip lengths); try again


def unknown_key_message(section: tuple[str, ...], key: object) -> str:
    """An unknown key's problem, with the nearest known key of its section when one is close."""
    known = _SECTION_KEYS.get(section, ())
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    listed = f"; expected one of {', '.join(known)}" if known else ""
    return f"unknown key {key!r}{listed}"


def describe_key_problems(
    exc: ValidationError,
    source_name: str,
    lines: Mapping[str, int],
    origins: Mapping[str, str] | None = None,
) -> list[str]:
    """Each problem pydantic found, as `spec.yaml line 7: api.rate_limit: ...` (no line when the spec has
    none, or when the value came from a flag or the environment)."""
    problems = []
    for error in exc.errors():
        key = _key_of(error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            loc = tuple(str(part) for part in error["loc"])
            message = unknown_key_message(loc[:-1], loc[-1])
        elif error["type"] == "missing":
            message = "is required"
        elif (
            "input" in error
            and not isinstance(error["input"], dict | list)
            and error["type"] != "value_error"
        ):
            message = f"{error['input']!r}: {message}"
        origin = (origins or {}).get(key, "spec")
        if origin in ("spec", "default"):
            shown = where(source_name, lines, key)
        else:
            shown = f"{source_name}: {key} (from {origin})"
        problems.append(f"{shown}: {message}")
    return problems


def _key_of(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the spec's key path: ("sweep", "cfg", 2) -> "sweep.cfg[2]"."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def validate_keys(data: Mapping[str, Any]) -> tuple[SpecKeys | None, ValidationError | None]:
    """The keys validated, and their problems; with problems, the keys validated once the bad ones are
    dropped (None when that is not possible: a model key is missing or bad, or the spec as a whole is)."""
    try:
        return SpecKeys.model_validate(data), None
    except ValidationError as exc:
        first = error = exc
    pruned: dict[str, Any] | None = dict(data)
    for _ in range(_PRUNE_ROUNDS):
        pruned = _without(pruned or {}, error)
        if pruned is None:
            return None, first
        try:
            return SpecKeys.model_validate(pruned), first
        except ValidationError as again:
            error = again
    return None, first


def _without(data: Mapping[str, Any], exc: ValidationError) -> dict[str, Any] | None:
    """`data` without the keys `exc` found bad: a section's bad key, else the whole top-level key."""
    kept = dict(data)
    for error in exc.errors():
        loc = error["loc"]
        if not loc or loc[0] in _NEEDED or (error["type"] == "missing" and len(loc) == 1):
            return None
        head = str(loc[0])
        section = kept.get(head)
        if len(loc) > 1 and isinstance(section, Mapping) and loc[1] in section:
            kept[head] = {key: value for key, value in section.items() if key != loc[1]}
        else:
            kept.pop(head, None)
    return kept
