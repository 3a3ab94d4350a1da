"""The values a sweep's axes and seeds accept: lists, `{start, stop, step}` ranges, `{count, start}` seeds.

Read before the models are resolved: a key the built-in table does not know as an input is kept as a
template variable (its values the text they render as), for the model checks and the template checks to
judge once the models are known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from promptgrid.models.catalog import INPUT_NAMES, SEED_MAX
from promptgrid.models.slugs import canonical_slug
from promptgrid.spec.template import variable_name_problem, variable_values

# The built-in table's axes: what a key is known to be before the models are resolved.
AXIS_NAMES = tuple(name for name in INPUT_NAMES if name not in ("prompt", "seed")) + ("model",)
# Not inputs a spec sets for every job: prompts come from the grid, seeds from `seeds:`.
NOT_SPEC_INPUTS = {
    "seed": "use seeds: [..] or seeds: {count, start}",
    "prompt": "prompts come from the grid's prompt column or the template",
}
MAX_RANGE_VALUES = 10_000
# Combinations every row is expanded into (axes × zip × seeds): they are held in memory, rows are not.
MAX_VARIANTS = 100_000


def _strict_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expand_range(value: Mapping[str, Any]) -> list[Any]:
    """{start, stop, step}, inclusive of stop, as a list; float steps rounded so 0.1 steps land on 0.3."""
    extra = set(value) - {"start", "stop", "step"}
    if extra or not {"start", "stop"} <= set(value):
        raise ValueError("a range needs start and stop, and may have step (nothing else)")
    start, stop, step = value["start"], value["stop"], value.get("step", 1)
    for key, number in (("start", start), ("stop", stop), ("step", step)):
        if not _strict_number(number) or not math.isfinite(number):
            raise ValueError(f"range {key} {number!r} is not a finite number")
    if step <= 0:
        raise ValueError(f"range step {step!r} must be above 0")
    if stop < start:
        raise ValueError(f"range stop {stop!r} is below start {start!r}")
    count = int((stop - start) / step + 1e-9) + 1
    if count > MAX_RANGE_VALUES:
        raise ValueError(f"the range has {count} values; at most {MAX_RANGE_VALUES} allowed")
    integral = all(isinstance(n, int) for n in (start, stop, step))
    return [start + i * step if integral else round(start + i * step, 10) for i in range(count)]


def _axis_values(key: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, Mapping):
        try:
            return tuple(_expand_range(value))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    if not isinstance(value, list):
        raise ValueError(
            f"{key}: {value!r} is not a list or a {{start, stop, step}} range (fixed values go in inputs)"
        )
    if not value:
        raise ValueError(f"{key}: the list is empty")
    return tuple(value)


def parse_axes(value: Any) -> Any:
    """Input axes as given; any other key is a template variable, its values the text they render as."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping of input or variable name to values")
    for key in value:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{key!r} is not an input name")
        if key in NOT_SPEC_INPUTS:
            raise ValueError(f"{key!r} is not an axis; {NOT_SPEC_INPUTS[key]}")
        problem = None if key in AXIS_NAMES else variable_name_problem(key)
        if problem:
            raise ValueError(
                f"{key!r} is not an input that can be swept ({', '.join(AXIS_NAMES)}), {problem}"
            )
    axes = {key: _axis_or_variable(key, _axis_values(key, axis)) for key, axis in value.items()}
    if "model" in axes:
        if not all(isinstance(slug, str) and slug.strip() for slug in axes["model"]):
            raise ValueError("model: every model must be a slug")
        axes["model"] = tuple(canonical_slug(slug) for slug in axes["model"])
    return axes


def _axis_or_variable(key: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A key the built-in table does not know is a template variable (its values the text they render as)
    or an input of a model resolved later: values that are not text or numbers stay as they are, for
    the model's schema or the variables' check (`check_spec`) to judge."""
    if key in AXIS_NAMES:
        return values
    try:
        return variable_values(key, values)
    except ValueError:
        return values


def parse_seeds(value: Any) -> tuple[int, ...]:
    """A list of seeds, or {count, start}; every one an integer from 0 to SEED_MAX."""
    if isinstance(value, Mapping):
        if set(value) - {"count", "start"} or "count" not in value:
            raise ValueError("seeds as a mapping needs count and may have start (nothing else)")
        count, start = value["count"], value.get("start", 0)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_VARIANTS:
            raise ValueError(f"seeds count {count!r} must be an integer from 1 to {MAX_VARIANTS}")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= SEED_MAX - count + 1:
            raise ValueError(f"seeds start {start!r} must be an integer from 0 to {SEED_MAX - count + 1}")
        return tuple(range(start, start + count))
    if not isinstance(value, list) or not value:
        raise ValueError(f"{value!r} is not a non-empty list of integers or {{count, start}}")
    for index, seed in enumerate(value):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
            raise ValueError(f"seeds[{index}] {seed!r} is not an integer from 0 to {SEED_MAX}")
    return tuple(value)
