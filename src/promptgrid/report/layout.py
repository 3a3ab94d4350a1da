"""How manifest rows are laid out for the report: a grid per prompt, one swept parameter across, one down.

A template variable is a parameter like any other. Grids are one per prompt unless a variable is put on an
axis: rows rendered from one template then share a grid whenever they differ only by the variables on its
axes ("subject × style" reads as one table), or `group_by` names the columns that set grids apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from promptgrid.errors import InvalidInput
from promptgrid.output.keys import slugify
from promptgrid.spec.template import parse_template

# Parameters a sweep varies, in the order they are preferred as axes: guidance and steps are what people
# compare most often, so they win when more than two parameters vary.
AXIS_PREFERENCE = (
    "cfg",
    "steps",
    "aspect_ratio",
    "prompt_strength",
    "output_quality",
    "output_format",
    "model",
    "image",
)

# Manifest columns that describe the outcome rather than the job; never offered as an axis.
OUTCOME_COLUMNS = frozenset(
    {
        "job_id",
        "status",
        "error_code",
        "error_message",
        "prediction_id",
        "attempts",
        "api_requests",
        "queued_at",
        "submitted_at",
        "completed_at",
        "predict_time_s",
        "cost_usd",
        "run_id",
        "version",
        "carried",
        "template",
        "variables",
        "prompt",
        "image_uri",
        "image_key",
        "sha256",
        "bytes",
        "width",
        "height",
        "image_format",
        "size_mismatch",
        "resolved_model",
        "inputs",
        "output_index",
    }
)

Row = Mapping[str, Any]


@dataclass
class PromptGrid:
    """One prompt's jobs arranged on two axes; each cell holds its variants (seeds, other swept values).

    `prompt` is the grid's heading: the prompt, or the template with the values shared by the whole grid.
    """

    prompt: str
    slug: str
    across: str | None
    down: str | None
    across_values: list[Any]
    down_values: list[Any]
    cells: dict[tuple[Any, Any], list[Row]] = field(default_factory=dict)
    variant_params: list[str] = field(default_factory=list)

    def cell(self, across_value: Any, down_value: Any) -> list[Row]:
        return self.cells.get((across_value, down_value), [])

    def rows(self) -> Iterable[Row]:
        for variants in self.cells.values():
            yield from variants

    def variants_per_cell(self) -> int:
        return max((len(v) for v in self.cells.values()), default=0)


def prompt_slug(prompt: str) -> str:
    """A file-name-safe, unique name for a prompt: its first words plus a short hash of the full text.

    The hash keeps prompts apart that differ only in punctuation or beyond the words kept.
    """
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return f"{slugify(prompt, fallback='prompt')}-{digest}"


def format_value(value: Any) -> str:
    """A parameter value as people write it: 3.5 not 3.5000001, 7 not 7.0, a dash for none."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def axis_label(name: str | None, value: Any) -> str:
    """A row or column heading: the parameter's name and value ("cfg 3.5"); empty without an axis."""
    return "" if name is None else f"{name} {format_value(value)}"


def sort_key(value: Any) -> tuple[int, Any]:
    # None sorts last; a manifest column holds one type, so the rest compare among themselves.
    return (1, 0) if value is None else (0, value)


def varying_params(rows: Sequence[Row], candidates: Iterable[str]) -> list[str]:
    """The candidates that take more than one value among the rows."""
    return [name for name in candidates if len({row.get(name) for row in rows}) > 1]


def sweep_params(columns: Iterable[str]) -> list[str]:
    """Every column a grid may use as an axis: model inputs and seed, then the grid's carried columns."""
    columns = list(columns)
    known = [name for name in (*AXIS_PREFERENCE, "seed") if name in columns]
    return known + [name for name in columns if name not in OUTCOME_COLUMNS and name not in known]


def check_axes(
    columns: Iterable[str], across: str | None, down: str | None, group_by: Sequence[str] = ()
) -> None:
    """Reject an axis or grouping flag that names no manifest column, listing the ones that would work."""
    allowed = sweep_params(columns)
    problems = [
        f"--{flag} {name!r} is not a parameter in the manifest; choose one of: {', '.join(allowed)}."
        for flag, name in (("across", across), ("down", down))
        if name is not None and name not in allowed
    ]
    groupable = ["prompt", "template", *allowed]
    problems += [
        f"--group-by {name!r} is not a manifest column to group by; choose from: {', '.join(groupable)}."
        for name in group_by
        if name not in groupable
    ]
    if across is not None and across == down:
        problems.append(f"--across and --down both name {across!r}; choose two different parameters.")
    problems += [
        f"--group-by {name!r} is also an axis; a grid cannot both hold one value of it and lay it out."
        for name in group_by
        if name in (across, down)
    ]
    if problems:
        raise InvalidInput(problems)


def choose_axes(
    rows: Sequence[Row], across: str | None = None, down: str | None = None
) -> tuple[str | None, str | None]:
    """The axes for one prompt's grid: the flags where given, else the preferred parameters that vary.

    Only the model's inputs and template variables are picked automatically: a carried column (a row id,
    a note) often differs on every row and would make a grid of one-image rows.
    """
    varying = [name for name in varying_params(rows, _candidates(rows)) if name not in (across, down)]
    if across is None and varying:
        across = varying.pop(0)
    if down is None and varying:
        down = varying.pop(0)
    return across, down


def build_grid(prompt: str, rows: Sequence[Row], across: str | None, down: str | None) -> PromptGrid:
    """Arrange one prompt's rows; within a cell, variants sort by the other swept values, then seed."""
    chosen_across, chosen_down = choose_axes(rows, across, down)
    axes = (chosen_across, chosen_down)
    others = [name for name in varying_params(rows, _candidates(rows)) if name not in axes]
    grid = PromptGrid(
        prompt=prompt,
        slug=prompt_slug(prompt),
        across=chosen_across,
        down=chosen_down,
        across_values=_axis_values(rows, chosen_across),
        down_values=_axis_values(rows, chosen_down),
        # Seed sets the variants apart inside a cell, unless a flag made it an axis.
        variant_params=[*others, "seed"] if "seed" not in axes else others,
    )
    for row in rows:
        key = (_value(row, chosen_across), _value(row, chosen_down))
        grid.cells.setdefault(key, []).append(row)
    if any(row.get("output_index") for row in rows):  # a `num_images` job's images, told apart
        grid.variant_params.append("output_index")
    for variants in grid.cells.values():
        variants.sort(key=lambda row: [sort_key(row.get(name)) for name in [*grid.variant_params, "job_id"]])
    return grid


def build_grids(
    rows: Sequence[Row], across: str | None = None, down: str | None = None, group_by: Sequence[str] = ()
) -> list[PromptGrid]:
    """One grid per prompt (or per group), in the order their first job was queued (the grid's order)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    axes = {name for name in (across, down) if name is not None}
    for row in rows:
        groups.setdefault(group_of(row, axes, group_by), []).append(row)
    order = sorted(groups, key=lambda key: (_first_queued(groups[key]), key))
    return [build_grid(title, groups[(key, title)], across, down) for key, title in order]


def group_of(row: Row, axes: Iterable[str], group_by: Sequence[str] = ()) -> tuple[str, str]:
    """The grid a row belongs to, as (key, heading).

    With `group_by`, the values of those columns. Otherwise the row's prompt, unless a variable of its
    template is on an axis: then the template with every other variable filled in, so the rows that differ
    only by the axes' values share one grid.
    """
    if group_by:
        parts = [_group_part(row, name) for name in group_by]
        return "\0".join(parts), " · ".join(parts)
    prompt = str(row.get("prompt") or "")
    template, variables = row.get("template"), row_variables(row)
    on_axes = set(axes) & set(variables)
    if not template or not on_axes:
        return prompt, prompt
    others = {name: value for name, value in variables.items() if name not in on_axes}
    heading = parse_template(str(template)).render_partial(others)
    return f"{template}\0{heading}", heading


def _group_part(row: Row, name: str) -> str:
    if name in ("prompt", "template"):
        return str(row.get(name) or "")
    return f"{name} {format_value(row.get(name))}"


def row_variables(row: Row) -> Mapping[str, str]:
    """The template variables a row's prompt was rendered with (none for a prompt written out)."""
    return _parse_variables(row.get("variables"))


@lru_cache(maxsize=4096)  # rows of one prompt combination share the text; the result is never changed
def _parse_variables(text: str | None) -> Mapping[str, str]:
    parsed: dict[str, str] = json.loads(text) if text else {}
    return parsed


def _candidates(rows: Sequence[Row]) -> list[str]:
    """Parameters that may be axes or set variants apart: the inputs (any model's `input_<name>` after the
    SD3.5 family's), then the rows' template variables."""
    inputs = dict.fromkeys(name for row in rows for name in row if name.startswith("input_"))
    variables = dict.fromkeys(name for row in rows for name in row_variables(row))
    return [*AXIS_PREFERENCE, *inputs, *(name for name in variables if name not in AXIS_PREFERENCE)]


def _first_queued(rows: Sequence[Row]) -> tuple[int, Any]:
    # The manifest is sorted by job id, a hash; queue time restores the order the grid listed prompts in.
    stamps = [row["queued_at"] for row in rows if row.get("queued_at") is not None]
    return (0, min(stamps)) if stamps else (1, 0)


def cell_captions(variants: Sequence[Row], params: Sequence[str]) -> list[str]:
    """One caption per variant of a cell, naming what sets it apart from the cell's other variants.

    A lone variant names all of `params`; several name only the parameters whose values differ among them,
    so captions cut to a tile's width still differ. Variants alike in every parameter show their job ids.
    """
    if len(variants) > 1:
        params = [name for name in params if len({format_value(row.get(name)) for row in variants}) > 1]
        if not params:
            return [f"job {str(row.get('job_id'))[:10]}" for row in variants]
    return [" · ".join(f"{name} {format_value(row.get(name))}" for name in params) for row in variants]


def describe_job(row: Row, params: Sequence[str]) -> str:
    """The job's parameters, one per line, for a hover title or a caption."""
    names = dict.fromkeys(["prompt", *params, "seed"])  # seed last unless params list it already
    lines = [f"{name}: {format_value(row.get(name))}" for name in names]
    lines.append(f"status: {row.get('status')}")
    lines.append(f"job: {row.get('job_id')}")
    return "\n".join(lines)


def _axis_values(rows: Sequence[Row], name: str | None) -> list[Any]:
    if name is None:
        return [None]
    return sorted({row.get(name) for row in rows}, key=sort_key)


def _value(row: Row, name: str | None) -> Any:
    return None if name is None else row.get(name)
