"""Where an axis's values come from besides a list: a wildcard file, or a sample of a list or file.

`{file: colors.txt}` reads one value a line (relative to the spec's folder; blank lines and lines whose
first non-blank character is `#` are skipped; each value is stripped of surrounding blanks). Only a regular
file of at most MAX_WILDCARD_BYTES is read: a device (`/dev/zero`), a FIFO or a larger file is refused.
`{sample: K, from: <list or file>, seed: N}` keeps K of those values: the K whose sha256 with the seed
(default 0) is smallest, in their original order. That choice depends only on the spec and the file, so
every run and every worker gets the same subset, and editing one value changes at most one pick.

Sources are resolved when the spec is read, before its keys are checked, so the rest of promptgrid only
ever sees lists.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptgrid.spec.problems import display_path

AXIS_SECTIONS = ("sweep", "zip")
SAMPLE_KEYS = frozenset({"sample", "from", "seed"})
# A wildcard file is read whole before anything runs: one larger than this is refused, not read.
MAX_WILDCARD_BYTES = 16 * 1024 * 1024
_LINE_DEPTH = 4  # key paths deeper than this are named by their parent's line
_LINE_ITEMS = 1000  # list items given their own line, per list


class SourceProblem(ValueError):
    """A value source that cannot give values; the message says why."""


class TooLarge(ValueError):
    """A file that is not a regular file, or larger than promptgrid reads whole; the message says which."""


def read_bounded_text(path: Path, limit: int) -> str:
    """A regular file's text (UTF-8, a BOM dropped), refused when it is not a regular file (a device, a
    FIFO: reading those may never end) or larger than `limit` bytes; OSError as `open` raises them."""
    info = os.stat(path)  # a FIFO's stat does not block; opening it would
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not stat.S_ISREG(info.st_mode):
        raise TooLarge("is not a regular file (a device, FIFO or socket); give a file of values")
    if info.st_size > limit:
        raise TooLarge(f"has {info.st_size:,} bytes; at most {limit:,} are read (split it, or sample it)")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)  # it may have grown since the stat
    if len(data) > limit:
        raise TooLarge(f"has more than {limit:,} bytes; at most {limit:,} are read (split it, or sample it)")
    return data.decode("utf-8-sig")


@dataclass(frozen=True)
class ResolvedSources:
    """The spec's data with every source replaced by its values, and what went wrong on the way."""

    data: Mapping[str, Any]
    problems: tuple[str, ...] = ()
    unresolved: frozenset[str] = frozenset()  # axes whose source failed: their checks are moot
    lines: Mapping[str, int] = field(default_factory=dict)  # "sweep.subject" -> its line in the spec


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every key and list item, by path: "sweep", "sweep.cfg", "sweep.cfg[2]"."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    _note_lines(root, "", lines, depth=0)
    return lines


def _note_lines(node: yaml.Node | None, path: str, lines: dict[str, int], depth: int) -> None:
    if depth > _LINE_DEPTH:  # deeper values are named by their nearest key's line
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines.setdefault(key, key_node.start_mark.line + 1)
            _note_lines(value_node, key, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode) and path:
        for index, item in enumerate(node.value[:_LINE_ITEMS]):
            lines.setdefault(f"{path}[{index}]", item.start_mark.line + 1)
            _note_lines(item, f"{path}[{index}]", lines, depth + 1)


def where(source_name: str, lines: Mapping[str, int], key: str) -> str:
    """`spec.yaml line 7: sweep.subject`: the line of the key, or of the nearest key above it that has one
    (none for a spec without lines, such as one given as a dict)."""
    path = key
    while path and path not in lines:
        path = path[: max(path.rfind("."), path.rfind("["), 0)]
    return f"{source_name} line {lines[path]}: {key}" if path else f"{source_name}: {key}"


def is_source(value: Any) -> bool:
    return isinstance(value, Mapping) and ("file" in value or "sample" in value)


def resolve_sources(
    data: Mapping[str, Any], base_dir: Path, source_name: str, lines: Mapping[str, int]
) -> ResolvedSources:
    """Replace each `{file: ..}` and `{sample: ..}` under sweep and zip by its list of values."""
    resolved_data, problems, unresolved = dict(data), [], set()
    for section in AXIS_SECTIONS:
        axes = data.get(section)
        if not isinstance(axes, Mapping) or not any(is_source(value) for value in axes.values()):
            continue
        resolved = dict(axes)
        for key, value in axes.items():
            if not is_source(value):
                continue
            try:
                resolved[key] = read_source(value, base_dir)
            except SourceProblem as exc:
                problems.append(f"{where(source_name, lines, f'{section}.{key}')}: {exc}")
                unresolved.add(str(key))
                resolved[key] = _stand_in(key, axes)
        resolved_data[section] = resolved
    return ResolvedSources(resolved_data, tuple(problems), frozenset(unresolved), lines)


def _stand_in(key: Any, axes: Mapping[str, Any]) -> list[Any]:
    """Values for an axis whose source failed, so checking goes on: as many as its zip partners have."""
    lengths = [len(value) for value in axes.values() if isinstance(value, list) and value]
    return [str(key)] * (lengths[0] if lengths else 1)


def read_source(value: Mapping[str, Any], base_dir: Path) -> list[Any]:
    """The values a source gives; SourceProblem when it gives none or is written wrong."""
    if "file" in value:
        if set(value) != {"file"}:
            raise SourceProblem("a file source is {file: NAME} alone (to sample it: {sample: K, from: NAME})")
        return read_wildcard_file(value["file"], base_dir)
    extra = set(value) - SAMPLE_KEYS
    if extra or "from" not in value:
        raise SourceProblem(
            "a sample is {sample: K, from: <list or file>} and may have seed: N (nothing else)"
        )
    population = value["from"]
    if isinstance(population, str):
        population = read_wildcard_file(population, base_dir)
    elif isinstance(population, Mapping) and set(population) == {"file"}:
        population = read_wildcard_file(population["file"], base_dir)
    elif not isinstance(population, list) or not population:
        raise SourceProblem(f"sample from {population!r}: expected a non-empty list or a file name")
    count, seed = value["sample"], value.get("seed", 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= len(population):
        raise SourceProblem(f"sample {count!r} of {len(population)} values: expected 1 to {len(population)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SourceProblem(f"sample seed {seed!r} is not an integer")
    return sample_values(population, count, seed)


def sample_values(population: list[Any], count: int, seed: int = 0) -> list[Any]:
    """The `count` values ranked first by sha256 of (seed, value), kept in population order.

    Ranking by a hash of the value (its position only breaks ties between repeats) makes the subset
    independent of Python's `random` and of the machine, and stable when other values are added.
    """

    def rank(item: tuple[int, Any]) -> tuple[bytes, int]:
        index, entry = item
        return hashlib.sha256(f"{seed}\x00{entry}".encode()).digest(), index

    chosen = sorted(sorted(enumerate(population), key=rank)[:count])
    return [entry for _, entry in chosen]


def read_wildcard_file(name: Any, base_dir: Path) -> list[str]:
    """One value a line; blank lines and `#` comment lines skipped; SourceProblem when it gives none."""
    if not isinstance(name, str) or not name.strip():
        raise SourceProblem(f"file {name!r} is not a file name")
    path = Path(name) if Path(name).is_absolute() else base_dir / name
    shown = display_path(path)
    try:
        text = read_bounded_text(path, MAX_WILDCARD_BYTES)
    except TooLarge as exc:
        raise SourceProblem(f"file {shown} {exc}") from None
    except FileNotFoundError:
        raise SourceProblem(
            f"file {shown} does not exist (a relative path starts at the spec's folder)"
        ) from None
    except IsADirectoryError:
        raise SourceProblem(f"file {shown} is a directory, not a file of values") from None
    except UnicodeDecodeError as exc:
        raise SourceProblem(f"file {shown}: byte {exc.start + 1} is not UTF-8; save it as UTF-8") from None
    except OSError as exc:
        raise SourceProblem(f"file {shown} cannot be read ({exc.strerror})") from None
    values = [line.strip() for line in text.splitlines()]
    values = [value for value in values if value and not value.startswith("#")]
    if not values:
        raise SourceProblem(f"file {shown} has no values (every line is blank or a # comment)")
    return values


def model_entries(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where each model is named in a spec, and how it is spelled there: the model axis, else `model`."""
    entries = []
    for section in ("sweep", "zip"):
        axis = data.get(section)
        values = axis.get("model") if isinstance(axis, Mapping) else None
        if isinstance(values, list):
            entries += [
                (f"{section}.model[{i}]", slug) for i, slug in enumerate(values) if isinstance(slug, str)
            ]
    if not entries and isinstance(data.get("model"), str):
        entries.append(("model", data["model"]))
    return entries
