"""Checking templates before anything is sent: every problem of the spec's template and the grid's prompts.

Reported together, each naming the spec line or the grid row: a template that does not parse, a placeholder
with no values, a placeholder named like an input, a variable no placeholder uses, and a template that can
render an empty prompt or one longer than the limit. Lengths are bounded per template from the longest
and shortest value of each axis (each axis adds its own length), so a million prompts are never rendered
to check them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from promptgrid.defaults import MAX_PROMPT_CHARS
from promptgrid.errors import InvalidInput
from promptgrid.spec.grid import CSV_SUFFIXES, GridContext, csv_batches, parquet_batches, read_layout
from promptgrid.spec.problems import ProblemLog
from promptgrid.spec.schema import SweepSpec
from promptgrid.spec.template import NAME, RESERVED_NAMES, Template, has_braces, parse_template
from promptgrid.spec.variables import AxisGroup, PromptAxes

SCAN_BATCH_ROWS = 50_000
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class Bounds:
    """The shortest and longest prompt a template renders, with the values that make each."""

    shortest: int
    longest: int
    blank_example: dict[str, str] | None  # values that render a blank prompt, if any do
    longest_example: dict[str, str]


class TemplateChecker:
    """Collects template problems for one spec; `check` runs them all and says whether grid rows template."""

    def __init__(self, spec: SweepSpec, log: ProblemLog):
        self.spec, self.sources, self.log = spec, spec.sources, log
        self.axes = PromptAxes(spec.template, spec.sweep, spec.zip, spec.variables, lambda _, value: value)
        self.collisions = frozenset(spec.input_names) | RESERVED_NAMES
        self.used: set[str] = set()
        self.limit = MAX_PROMPT_CHARS
        self._bounds: dict[tuple[str, tuple[str, ...]], Bounds] = {}

    def check(self) -> bool:
        """Run every check; True when some grid prompt is itself a template."""
        columns: Collection[str] = ()
        grid_templates = False
        if self.spec.prompts is not None and self.spec.prompts.is_file():
            try:
                columns = read_layout(self._grid_context()).columns
                grid_templates = self._scan_grid()
            except InvalidInput:
                pass  # the grid's own check has reported what makes it unreadable
        if self.spec.template is not None:
            self._check_spec_template(columns)
        self._check_unused()
        return grid_templates

    def _spec_where(self, key: str) -> str:
        return self.spec.where(key)

    def _grid_context(self) -> GridContext:
        assert self.spec.prompts is not None
        template = self.spec.template is not None
        return GridContext(self.spec.prompts, self.spec.model_schemas(), self.spec.base_dir, template)

    def _check_spec_template(self, columns: Collection[str]) -> None:
        assert self.spec.template is not None
        template = parse_template(self.spec.template)
        at = self._spec_where("template")
        self.used.update(template.variables)
        for problem in self._problems(template):
            self.log.add(f"{at}: {problem}")
        for name in template.variables:
            if name not in self.axes.variables and name not in columns and name not in self.collisions:
                self.log.add(
                    f"{at}: placeholder {{{name}}} has no values; give {name} a list under sweep or zip "
                    "(a list, {file: NAME} or {sample: K, from: ..}), or the grid a column named " + name
                )
        known = [name for name in template.variables if name in self.axes.variables]
        if len(known) == len(template.variables) and not self._unresolved(template):
            for problem in self._render_problems(template, ()):
                self.log.add(f"{at}: {problem}")

    def _problems(self, template: Template) -> Iterator[str]:
        """Syntax problems, and placeholders whose names collide with inputs."""
        for problem in template.problems:
            yield str(problem)
        for name in template.variables:
            if name in self.collisions:
                kind = "the name of an input" if name not in RESERVED_NAMES else "a reserved name"
                yield (
                    f"placeholder {{{name}}} is {kind}; a variable needs a name of its own "
                    "(inputs are set under inputs, sweep or zip)"
                )

    def _unresolved(self, template: Template) -> bool:
        return bool(self.sources.unresolved & set(template.variables))

    def _check_unused(self) -> None:
        for name in self.spec.variables:
            if name in self.used:
                continue
            section = "sweep" if name in self.spec.sweep else "zip"
            models = self.spec.model_schemas()
            near = dict.fromkeys(found for model in models if (found := model.suggest(name)))
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            inputs = [n for n in self.spec.input_names if n not in ("prompt", "seed")]
            self.log.add(
                f"{self._spec_where(f'{section}.{name}')}: {name!r} is not an input that can be swept "
                f"({', '.join(inputs)}){hint}, and no placeholder {{{name}}} in the template or the grid's "
                "prompts uses it"
            )

    # The grid: rows whose prompt is a template, or whose empty prompt takes the spec's.

    def _scan_grid(self) -> bool:
        ctx = self._grid_context()
        if not (self.spec.template or self.spec.variables) and not _may_have_braces(ctx):
            return False
        layout = read_layout(ctx)
        fillers = [name for name in layout.carried_columns if NAME.fullmatch(str(name))]
        wanted = (["prompt"] if "prompt" in layout.columns else []) + fillers
        if layout.kind == "csv":
            batches = csv_batches(ctx, layout, SCAN_BATCH_ROWS, ProblemLog())  # its problems are known
        else:
            batches = parquet_batches(ctx, wanted, SCAN_BATCH_ROWS)
        found, unit = False, "line" if layout.kind == "csv" else "row"
        for numbers, columns in batches:
            rows, prompts = self._templated_rows(columns)
            cells = {name: columns[name].take(rows).to_pylist() for name in fillers}
            for index, row in enumerate(rows.to_pylist()):
                prompt = prompts[index]
                found |= isinstance(prompt, str) and prompt.strip() != ""
                label = f"{ctx.display} {unit} {numbers[row]}"
                self._check_row(label, prompt, {name: values[index] for name, values in cells.items()})
        return found

    def _templated_rows(self, columns: Mapping[str, pa.Array]) -> tuple[pa.Array, list[Any]]:
        """The rows that render a template: prompts with braces, and (with a spec template) empty ones."""
        prompt = columns.get("prompt")
        if prompt is None:
            return pa.array(range(_length(columns)), pa.int64()), [None] * _length(columns)
        prompt = prompt.cast(pa.string()) if not pa.types.is_string(prompt.type) else prompt
        mask = pc.match_substring_regex(prompt, "[{}]")
        if self.spec.template is not None:
            mask = pc.or_kleene(mask, pc.equal(pc.utf8_trim_whitespace(prompt), ""))
            mask = pc.or_kleene(mask, pc.is_null(prompt))
        rows = pc.indices_nonzero(mask.fill_null(False))
        return rows, prompt.take(rows).to_pylist()

    def _check_row(self, label: str, prompt: Any, cells: Mapping[str, Any]) -> None:
        own = isinstance(prompt, str) and prompt.strip() != ""
        text = prompt if own else self.spec.template
        if text is None:
            return
        template = parse_template(text)
        self.used.update(template.variables)
        at = f"{label}, column prompt" if own else label
        if own and has_braces(text):
            for problem in self._problems(template):
                self.log.add(f"{at}: {problem}")
        filled = tuple(name for name in template.variables if _filled(cells.get(name)))
        missing = [
            name
            for name in template.variables
            if name not in filled and name not in self.axes.variables and name not in self.collisions
        ]
        for name in missing:
            if name in cells:
                self.log.add(f"{label}, column {name}: empty, and no sweep or zip gives {{{name}}} values")
            elif own:  # a spec template's placeholder without values is reported once, at the spec
                self.log.add(
                    f"{at}: placeholder {{{name}}} has no values "
                    f"(no sweep or zip key {name}, no column {name})"
                )
        if (own or filled) and not missing and not self._unresolved(template):
            extra = {name: str(cells[name]) for name in filled}
            for problem in self._render_problems(template, filled, extra):
                self.log.add(f"{at}: {problem}")

    # Rendered lengths, bounded without rendering.

    def _render_problems(
        self, template: Template, filled: tuple[str, ...], values: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        if any(name not in self.axes.variables for name in template.variables if name not in filled):
            return  # a placeholder without values is reported already
        key = (template.text, filled)
        bounds = self._bounds.get(key)
        if bounds is None:
            bounds = self._bounds[key] = template_bounds(template, self.axes.groups, filled)
        values = values or {}
        added = sum(len(value) * template.occurrences(name) for name, value in values.items())
        if bounds.blank_example is not None and not values:
            yield f"renders an empty prompt (with {_show(bounds.blank_example)})"
        if bounds.longest + added > self.limit:
            example = {**bounds.longest_example, **values}
            yield (
                f"renders prompts of up to {bounds.longest + added:,} characters (with {_show(example)}); "
                f"at most {self.limit:,} allowed"
            )


def template_bounds(template: Template, groups: Sequence[AxisGroup], filled: Collection[str]) -> Bounds:
    """The shortest and longest rendering of `template` over the axes it uses (filled names left out)."""
    wanted = set(template.variables) - set(filled)
    axes = [group for group in groups if wanted & set(group.names)]
    axes += [AxisGroup((name,), tuple((o,) for o in options)) for name, options in template.choices.items()]
    shortest = longest = len(template.literal_text)
    blank: dict[str, str] | None = {} if not template.literal_text.strip() and not filled else None
    example: dict[str, str] = {}
    for group in axes:
        used = [(i, name) for i, name in enumerate(group.names) if name in wanted or name in template.choices]

        def length(step: tuple[Any, ...], used: list[tuple[int, str]] = used) -> int:
            return sum(len(str(step[i])) * template.occurrences(name) for i, name in used)

        lengths = [length(step) for step in group.steps]
        shortest += min(lengths)
        longest += max(lengths)
        top = group.steps[lengths.index(max(lengths))]
        example.update({name: str(top[i]) for i, name in used})
        if blank is not None:
            blanks = (step for step in group.steps if all(not str(step[i]).strip() for i, _ in used))
            empty = next(blanks, None)
            blank = None if empty is None else {**blank, **{name: str(empty[i]) for i, name in used}}
    return Bounds(shortest, longest, blank, example)


def _show(values: Mapping[str, str]) -> str:
    shown = []
    for name, value in values.items():
        text = value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 1] + "…"
        shown.append(f"{name}={text!r}")
    return ", ".join(shown) or "no variables"


def _filled(value: Any) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return False
    return bool(str(value).strip())


def _length(columns: Mapping[str, pa.Array]) -> int:
    return len(next(iter(columns.values()))) if columns else 0


def _may_have_braces(ctx: GridContext) -> bool:
    """Whether any prompt may hold a brace: a byte scan of a CSV, the prompt column of a Parquet file."""
    path: Path = ctx.path
    if path.suffix.lower() in CSV_SUFFIXES:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                if b"{" in chunk or b"}" in chunk:
                    return True
        return False
    source = pq.ParquetFile(path)
    if "prompt" not in source.schema_arrow.names:
        return False
    for batch in source.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=["prompt"]):
        column = batch.column(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            return True  # not text: let the full scan decide
        # A string array's characters sit in one buffer: a byte search there beats a regex per value.
        # (It may hold bytes outside the array's slice; a brace found there only costs the full scan.)
        data = column.buffers()[2]
        if data is not None and (b"{" in (text := data.to_pybytes()) or b"}" in text):
            return True
    return False
