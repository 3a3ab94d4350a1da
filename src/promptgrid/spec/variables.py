"""The prompt side of expansion: per grid row, its template's variables crossed and each prompt rendered.

A row's template is its own `prompt` cell when that is not empty, else the spec's `template:`. A placeholder
takes its value from the row's grid column of the same name when that cell is not empty, else from the
spec's sweep or zip; an inline variant `{a|b}` is an axis of its own. Only the axes a row's template uses
are crossed (a variable it does not use would only repeat the same prompt), except a zip that also sets
inputs, which is crossed for every row. Combinations are streamed, never held: a template of a million
prompts costs one rendering and one hash per job, like a million-row grid.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from json.encoder import encode_basestring
from typing import Any

from promptgrid.errors import InvalidInput
from promptgrid.spec.template import Template, has_braces, parse_template

# Row plans kept per (template, columns that fill it); cleared when full, as a grid of unique templates
# would otherwise keep one per row.
_PLAN_CACHE = 10_000


@dataclass(frozen=True)
class AxisGroup:
    """Keys that advance together: one sweep variable, a zip (variables and perhaps inputs), or a variant."""

    names: tuple[str, ...]
    steps: tuple[tuple[Any, ...], ...]  # per step, one value per name (inputs normalised)
    inputs: frozenset[str] = frozenset()  # the names that are model inputs (a zip mixing both)


@dataclass(frozen=True)
class RowPlan:
    """How one template, with some variables filled by the row, expands: axes to cross and where values go.

    A combination is a flat tuple: each crossed group's step, one after the other, then the row's values.
    """

    template: Template
    groups: tuple[AxisGroup, ...]
    filled: tuple[str, ...]  # variables the row's own cells fill, appended after the groups' values
    slot_positions: tuple[int, ...]  # per template slot, its value's index in the flat tuple
    input_positions: tuple[tuple[str, int], ...]  # inputs a crossed zip sets
    variable_positions: tuple[tuple[str, int], ...]  # every name the template uses

    @property
    def count(self) -> int:
        return math.prod(len(group.steps) for group in self.groups)

    def combinations(self, row_values: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
        combos: Iterator[tuple[Any, ...]]
        if all(len(group.names) == 1 for group in self.groups):  # one value a step: product is flat
            combos = itertools.product(*([step[0] for step in group.steps] for group in self.groups))
        else:
            chain = itertools.chain.from_iterable
            combos = map(tuple, map(chain, itertools.product(*(group.steps for group in self.groups))))
        return map(operator.add, combos, itertools.repeat(row_values)) if row_values else combos

    @cached_property
    def _slot_values(self) -> Callable[[Sequence[Any]], Any]:
        """Picks a combination's values in slot order, as the %-format wants them (C-level itemgetter)."""
        positions = self.slot_positions
        if len(positions) == 1:
            return operator.itemgetter(positions[0])  # a lone str formats as itself
        return operator.itemgetter(*positions) if positions else lambda _: ()

    def render(self, flat: Sequence[Any]) -> str:
        return str(self.template.format_string % self._slot_values(flat))

    def render_all(self, combinations: Iterator[tuple[Any, ...]]) -> Iterator[str]:
        """The prompts of many combinations, each a %-format in C: the count's hot loop."""
        return map(self.template.format_string.__mod__, map(self._slot_values, combinations))

    def variables(self, flat: Sequence[Any]) -> dict[str, str]:
        return {name: flat[i] for name, i in self.variable_positions}

    def inputs(self, flat: Sequence[Any]) -> dict[str, Any]:
        return {name: flat[i] for name, i in self.input_positions if flat[i] is not None}


@dataclass(frozen=True)
class RowPrompts:
    """The prompts of one row: its plan and the values its own cells give."""

    plan: RowPlan
    row_values: tuple[str, ...]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self.plan.combinations(self.row_values)


# A rendered prompt as a job needs it: the row's plan, the combination's values, the prompt's text.
Choice = tuple[RowPlan, tuple[Any, ...], str]


class PromptAxes:
    """A spec's template and variable axes, turned into a plan per row (plans cached by template)."""

    def __init__(
        self,
        template: str | None,
        sweep: Mapping[str, Sequence[Any]],
        zip_axes: Mapping[str, Sequence[Any]],
        variables: Sequence[str],
        normalise: Callable[[str, Any], Any],
        grid_templates: bool = False,
    ):
        self.template = template
        self.variables = frozenset(variables)
        self.groups = tuple(_groups(sweep, zip_axes, self.variables, normalise))
        # Rows need templating when the spec has a template or variables, or the grid's prompts do.
        self.active = bool(template or variables or grid_templates)
        self._plans: dict[tuple[str, tuple[str, ...]], RowPlan] = {}

    def for_row(self, prompt: Any, cells: Mapping[str, Sequence[Any]], row: int) -> RowPrompts | None:
        """The row's prompts, or None when it is a plain prompt that expands as it always has."""
        text = prompt if isinstance(prompt, str) and prompt.strip() else self.template
        if text is None:
            return None
        mixed = any(group.inputs for group in self.groups)
        if not mixed and text is prompt and not has_braces(text):
            return None
        template = parse_template(text)
        filled = tuple(
            name for name in template.variables if name in cells and _cell_text(cells[name][row]) is not None
        )
        plan = self._plan(template, filled)
        return RowPrompts(plan, tuple(str(_cell_text(cells[name][row])) for name in filled))

    def _plan(self, template: Template, filled: tuple[str, ...]) -> RowPlan:
        key = (template.text, filled)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[key] = self._make_plan(template, filled)
        return plan

    def _make_plan(self, template: Template, filled: tuple[str, ...]) -> RowPlan:
        wanted = set(template.variables) - set(filled)
        groups = [group for group in self.groups if group.inputs or wanted & set(group.names)]
        groups += [AxisGroup((name,), tuple((option,) for option in options)) for name, options in
                   template.choices.items()]  # fmt: skip
        names = [name for group in groups for name in group.names] + list(filled)
        position: dict[str, int] = {}
        for index, name in enumerate(names):
            position.setdefault(name, index)
        missing = [name for name in template.names if name not in position]
        if missing:  # load_spec reports these with file and line; here the grid changed since
            shown = ", ".join("{" + name + "}" for name in missing)
            raise InvalidInput([f"template {template.text!r}: no values for {shown}"])
        inputs = [(name, position[name]) for group in groups for name in sorted(group.inputs)]
        return RowPlan(
            template=template,
            groups=tuple(groups),
            filled=filled,
            slot_positions=tuple(position[name] for name in template.slots),
            input_positions=tuple(inputs),
            variable_positions=tuple((name, position[name]) for name in template.names),
        )


def _groups(
    sweep: Mapping[str, Sequence[Any]],
    zip_axes: Mapping[str, Sequence[Any]],
    variables: frozenset[str],
    normalise: Callable[[str, Any], Any],
) -> Iterator[AxisGroup]:
    for name, values in sweep.items():
        if name in variables:
            yield AxisGroup((name,), tuple((value,) for value in values))
    if variables & set(zip_axes):
        names = tuple(zip_axes)
        inputs = frozenset(name for name in names if name not in variables)
        columns = [
            [normalise(name, value) if name in inputs else value for value in zip_axes[name]]
            for name in names
        ]
        yield AxisGroup(names, tuple(zip(*columns, strict=True)), inputs)


def _cell_text(value: Any) -> str | None:
    """A grid cell as the text it fills a placeholder with; None when empty (the spec's values apply)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def prompt_slot(
    keys: tuple[str, ...], values: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A row's input names with `prompt` among them, and its values before and after the prompt's place."""
    at = bisect.bisect_left(keys, "prompt")
    has_prompt = at < len(keys) and keys[at] == "prompt"
    names = keys if has_prompt else (*keys[:at], "prompt", *keys[at:])
    return names, values[:at], values[at + 1 if has_prompt else at :]


def rendered_rows(
    keys: tuple[str, ...], values: tuple[str, ...], found: RowPrompts | None, encode: Callable[[Any], str]
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...], Choice | None]]:
    """One row's (input names, their canonical JSON, the prompt's choice) per prompt it renders.

    `keys`/`values` are the row's own inputs (sorted names, JSON text); `encode` writes a value as the
    job id's canonical JSON does, for inputs a zip sets.
    """
    if found is None:
        yield keys, values, None
        return
    plan = found.plan
    if plan.input_positions:  # a zip sets inputs: merged per prompt, the row's own cells winning
        own = dict(zip(keys, values, strict=True))
        for flat in found:
            text = plan.render(flat)
            merged = {name: encode(value) for name, value in plan.inputs(flat).items()}
            merged.update(own, prompt=encode_basestring(text))
            names = tuple(sorted(merged))
            yield names, tuple(merged[name] for name in names), (plan, flat, text)
        return
    names, before, after = prompt_slot(keys, values)
    for flat in found:
        text = plan.render(flat)
        yield names, (*before, encode_basestring(text), *after), (plan, flat, text)
