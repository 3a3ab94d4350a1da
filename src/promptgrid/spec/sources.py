"""Where an axis's values come from besides a list: a wildcard file, or a sample of a list or file.

`{file: colors.txt}` reads one value a line (relative to the spec's folder; blank lines and lines whose
first non-blank character is `#` are skipped; each value is stripped of surrounding blanks).
`{sample: K, from: <list or file>, seed: N}` keeps K of those values: the K whose sha256 with the seed
(default 0) is smallest, in their original order. That choice depends only on the spec and the file, so
every run and every worker gets the same subset, and editing one value changes at most one pick.

Sources are resolved when the spec is read, before its keys are checked, so the rest of promptgrid only
ever sees lists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptgrid.spec.problems import display_path

AXIS_SECTIONS = ("sweep", "zip")
SAMPLE_KEYS = frozenset({"sample", "from", "seed"})


class SourceProblem(ValueError):
    """A value source that cannot give values; the message says why."""


@dataclass
class ResolvedSources:
    """The spec's data with every source replaced by its values, and what went wrong on the way."""

    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    unresolved: set[str] = field(default_factory=set)  # axes whose source failed: their checks are moot
    lines: dict[str, int] = field(default_factory=dict)  # "sweep.subject" -> its line in the spec


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of each top-level key and of each key one level down ("sweep.subject")."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        key = str(key_node.value)
        lines[key] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[f"{key}.{sub_key.value}"] = sub_key.start_mark.line + 1
    return lines


def where(source_name: str, lines: Mapping[str, int], key: str) -> str:
    """`spec.yaml line 7: sweep.subject` (the line left out when it is not known)."""
    line = lines.get(key) or lines.get(key.split(".", 1)[0])
    return f"{source_name} line {line}: {key}" if line else f"{source_name}: {key}"


def is_source(value: Any) -> bool:
    return isinstance(value, Mapping) and ("file" in value or "sample" in value)


def resolve_sources(data: dict[str, Any], base_dir: Path, source_name: str, text: str) -> ResolvedSources:
    """Replace each `{file: ..}` and `{sample: ..}` under sweep and zip by its list of values."""
    result = ResolvedSources(dict(data), lines=key_lines(text))
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
                result.problems.append(f"{where(source_name, result.lines, f'{section}.{key}')}: {exc}")
                result.unresolved.add(str(key))
                resolved[key] = _stand_in(key, axes)
        result.data[section] = resolved
    return result


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
        text = path.read_text(encoding="utf-8-sig")
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
