"""Expanding grid rows × prompts × sweep × zip × seeds into Jobs with deterministic ids, duplicates collapsed.

A job's inputs come from, last one winning: the model's defaults, the spec's `inputs`, the sweep and zip
axes and seed, then the row's own input columns (an empty cell falls back); each only where the job's model
has that input (a two-model study sets each model's own inputs). A row whose prompt is a template (or that
falls back to the spec's `template:`) becomes one prompt per combination of its variables (`variables`).
The job id is a hash of model, version and those normalised inputs, the rendered prompt among them, so
neither row nor axis order changes it; carried columns and variables do not enter it. Rows are read in
batches, prompts are rendered as they are needed, and only 16-byte digests are kept for dedup, so millions
of jobs never sit in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from promptgrid.models.schema import ModelSchema
from promptgrid.spec.checks import check_value, iter_grid
from promptgrid.spec.grid import GridBatch, GridContext
from promptgrid.spec.schema import SweepSpec
from promptgrid.spec.variables import Choice, PromptAxes, RowPrompts, prompt_slot, rendered_rows
from promptgrid.types import Job

ID_BYTES = 16  # the job id is the first 32 hex characters of the sha256
GRID_BATCH_ROWS = 50_000
# Rendered rows hashed at a time when counting: a template of a million prompts is one grid row.
COUNT_CHUNK = 50_000
PROMPT_SAMPLES = 5  # distinct rendered prompts the dry run shows

# Canonical JSON: sorted keys, no spaces; check_input already made numbers real floats and ints, so 3.5,
# "3.5" and 3.50 encode alike. NaN can never reach here: validation rejects it.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def job_digest(model: str, version: str, inputs: Mapping[str, Any]) -> bytes:
    """The 16 bytes a job id is the hex of: a hash of model, version and the normalised inputs."""
    present = {key: value for key, value in inputs.items() if value is not None}
    return hashlib.sha256(_encode([model, version, present]).encode("utf-8")).digest()[:ID_BYTES]


def job_id(model: str, version: str, inputs: Mapping[str, Any]) -> str:
    return job_digest(model, version, inputs).hex()


@dataclass(frozen=True)
class Variant:
    """One combination applied to every row: a model and its inputs from defaults, inputs, axes and seed."""

    model: str
    inputs: dict[str, Any]
    input_names: frozenset[str] = frozenset()  # every input the model has: which row columns apply


def _normalised(spec: SweepSpec, model: ModelSchema | None, name: str, raw: Any) -> Any:
    """A value normalised by one model's schema (None: by every model of the study that has the input)."""
    models = spec.model_schemas() if model is None else (model,)
    value, allowed = check_value(models, name, raw, spec.base_dir)
    if allowed is not None:  # load_spec rejects these; a spec built by hand may not have been through it
        raise ValueError(f"{name}: {raw!r} is not allowed; expected {allowed}")
    return value


def _axis_combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the input sweep axes, each with every step of the zip axes (unless the zip
    holds a template variable: it then advances with the prompts, in `variables`)."""
    variables = set(spec.variables)
    sweep = {key: values for key, values in spec.sweep.items() if key not in variables}
    zip_axes = {} if variables & set(spec.zip) else spec.zip
    products = [dict(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]
    zip_keys = list(zip_axes)
    steps = [dict(zip(zip_keys, values, strict=True)) for values in zip(*zip_axes.values(), strict=True)]
    return [{**product, **step} for product in products for step in (steps or [{}])]


def build_variants(spec: SweepSpec) -> list[Variant]:
    """The combinations every row is expanded into, in spec order (models, axes, then seeds)."""
    variants = []
    for combination in _axis_combinations(spec):
        model = spec.catalog.get(combination.pop("model", spec.model))
        base = dict(model.defaults)
        for name, raw in {**spec.inputs, **combination}.items():
            if name in model.properties:  # another model's input, in a study of several
                base[name] = _normalised(spec, model, name, raw)
        seeds: tuple[int | None, ...] = spec.seeds if "seed" in model.properties else (None,)
        for seed in seeds:
            inputs = {key: value for key, value in {**base, "seed": seed}.items() if value is not None}
            variants.append(Variant(model.slug, inputs, frozenset(model.properties)))
    return variants


def _encode_value(value: Any) -> str:
    """One value exactly as the canonical JSON writes it (json's own string escaping and number repr)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _encode(value)
    return repr(value)


def _template(model: str, version: str, fixed: Mapping[str, Any], own_keys: tuple[str, ...]) -> str:
    """The canonical JSON of a job as a %-template: fixed values written in, a `%s` per row value.

    Keys stay in sorted order whichever side a value comes from, so the text (and id) is the same as
    job_digest's for the merged inputs.
    """
    parts = []
    for key in sorted({*fixed, *own_keys}):
        head = _encode_value(key) + ":"
        parts.append(
            head.replace("%", "%%") + "%s"
            if key in own_keys
            else (head + _encode_value(fixed[key])).replace("%", "%%")
        )
    start = f"[{_encode_value(model)},{_encode_value(version)},{{".replace("%", "%%")
    return start + ",".join(parts) + "}]"


def prompt_axes(spec: SweepSpec) -> PromptAxes:
    """The spec's template and variable axes, zip inputs normalised as the sweep's are."""
    return PromptAxes(
        spec.template,
        spec.sweep,
        spec.zip,
        spec.variables,
        lambda name, raw: _normalised(spec, None, name, raw),
        grid_templates=spec.grid_templates,
    )


class Expander:
    """Expands rows into job digests, keeping the digests seen; per job only a %-format and a hash.

    `multiplied` counts a batch's jobs without expanding them: per row, its prompts times the variants.
    """

    def __init__(self, spec: SweepSpec):
        self.variants = build_variants(spec)
        self.axes = prompt_axes(spec)
        self.version = spec.version
        self.seen: set[bytes] = set()
        self.candidates = 0  # jobs before identical ones collapse
        self.prompts: set[int] = set()  # hashes of the distinct prompts, not the strings
        self.prompt_samples: list[str] = []
        self._templates: dict[tuple[str, ...], list[tuple[str, tuple[int, ...] | None]]] = {}

    def templates(self, own_keys: tuple[str, ...]) -> list[tuple[str, tuple[int, ...] | None]]:
        """Per variant, its %-template and which of the row's values it takes (None: all of them)."""
        found = self._templates.get(own_keys)
        if found is None:
            found = []
            for v in self.variants:
                kept = tuple(i for i, key in enumerate(own_keys) if key in v.input_names)
                keys = tuple(own_keys[i] for i in kept)
                found.append(
                    (_template(v.model, self.version, v.inputs, keys), None if keys == own_keys else kept)
                )
            self._templates[own_keys] = found
        return found

    def rows(self, batch: GridBatch) -> Iterator[tuple[int, tuple[str, ...], tuple[str, ...], Choice | None]]:
        """Per row and per prompt it renders: (row, input names, their JSON, the prompt's choice or None)."""
        if not self.axes.active:
            for row, (keys, values) in enumerate(_encoded_rows(batch)):
                yield row, keys, values, None
            return
        for row, keys, values, found in self._rows_with_prompts(batch):
            for names, encoded, choice in rendered_rows(keys, values, found, _encode_value):
                yield row, names, encoded, choice

    def _rows_with_prompts(
        self, batch: GridBatch
    ) -> Iterator[tuple[int, tuple[str, ...], tuple[str, ...], RowPrompts | None]]:
        prompts, cells = batch.inputs.get("prompt"), batch.carried
        for row, (keys, values) in enumerate(_encoded_rows(batch)):
            yield row, keys, values, self.axes.for_row(None if prompts is None else prompts[row], cells, row)

    def expand(self, batch: GridBatch) -> Iterator[tuple[bytes, Variant, int, Choice | None]]:
        """Jobs not seen before, row by row, variants in spec order, as (digest, variant, row, prompt)."""
        sha256, seen, variants = hashlib.sha256, self.seen, self.variants  # this loop runs once per job
        for row, keys, values, choice in self.rows(batch):
            for variant, (template, kept) in zip(variants, self.templates(keys), strict=True):
                own = values if kept is None else tuple(values[i] for i in kept)
                digest = sha256((template % own).encode("utf-8")).digest()[:ID_BYTES]
                if digest not in seen:
                    seen.add(digest)
                    yield digest, variant, row, choice

    def multiplied(self, batch: GridBatch) -> tuple[int, int]:
        """The batch's jobs and prompts before identical ones collapse, by multiplication alone."""
        if not self.axes.active:
            return len(batch) * len(self.variants), len(batch)
        prompts = sum(
            1 if found is None else found.plan.count for *_, found in self._rows_with_prompts(batch)
        )
        return prompts * len(self.variants), prompts

    def prompt_texts(self, batch: GridBatch) -> Iterator[str]:
        """The batch's prompts as rendered, in order (lazily: a row may render a trillion)."""
        plain = batch.inputs.get("prompt")
        for row, _, _, choice in self.rows(batch):
            yield choice[2] if choice is not None else str(plain[row]) if plain is not None else ""

    def count(self, batch: GridBatch) -> None:
        """Add the batch's job digests to `seen` and its prompts to `prompts`: the exact count's fast path."""
        if self.axes.active:
            self._count_rendered(batch)
            return
        self.candidates += len(batch) * len(self.variants)
        self.prompts.update(map(hash, batch.inputs["prompt"]))
        names = tuple(sorted(batch.inputs))
        columns = [_encode_column(batch.inputs[name]) for name in names]
        groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        if any(None in column for column in columns):
            for keys, values in _encoded_rows(batch):
                groups.setdefault(keys, []).append(values)
        else:  # every row sets the same inputs: one group, no per-row bookkeeping
            groups[names] = list(zip(*columns, strict=True))
        self._hash_groups(groups)

    def _hash_groups(self, groups: Mapping[tuple[str, ...], list[tuple[str, ...]]]) -> None:
        sha256 = hashlib.sha256
        for keys, rows in groups.items():
            for template, kept in self.templates(keys):
                picked = rows if kept is None else [tuple(values[i] for i in kept) for values in rows]
                self.seen.update(
                    [sha256((template % values).encode()).digest()[:ID_BYTES] for values in picked]
                )

    def _count_rendered(self, batch: GridBatch) -> None:
        """The count for rows that render prompts, a chunk of prompts at a time so none pile up.

        A row whose prompts change nothing but the prompt (no zip of inputs) takes the bulk path: the
        prompts are rendered, encoded and put in place by C-level maps, leaving one hash per job.
        """
        groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        texts: list[str] = []
        plain = batch.inputs.get("prompt")
        for row, keys, values, found in self._rows_with_prompts(batch):
            if found is not None and not found.plan.input_positions:
                names, before, after = prompt_slot(keys, values)
                rendered = found.plan.render_all(iter(found))
                while chunk := list(itertools.islice(rendered, COUNT_CHUNK)):
                    self._note_prompts(chunk)
                    encoded = map(encode_basestring, chunk)
                    rows: list[tuple[str, ...]] = (
                        list(zip(encoded))
                        if not before and not after
                        else [(*before, e, *after) for e in encoded]
                    )
                    self._hash_groups({names: rows})
                continue
            for names, encoded_values, choice in rendered_rows(keys, values, found, _encode_value):
                texts.append(choice[2] if choice is not None else plain[row] if plain is not None else "")
                groups.setdefault(names, []).append(encoded_values)
                if len(texts) >= COUNT_CHUNK:
                    self._note_prompts(texts)
                    self._hash_groups(groups)
                    groups, texts = {}, []
        self._note_prompts(texts)
        self._hash_groups(groups)

    def _note_prompts(self, texts: list[str]) -> None:
        """Count rendered prompts (their hashes, and candidates per variant), keeping the first few."""
        self.prompts.update(map(hash, texts))
        self.candidates += len(texts) * len(self.variants)
        for text in texts:
            if len(self.prompt_samples) >= PROMPT_SAMPLES:
                break
            if text not in self.prompt_samples:
                self.prompt_samples.append(text)


def _encoded_rows(batch: GridBatch) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per row, the names of the inputs it sets and their canonical JSON text, both in sorted name order."""
    names = tuple(sorted(batch.inputs))
    columns = [_encode_column(batch.inputs[name]) for name in names]
    for values in zip(*columns, strict=True):
        if None in values:  # an empty cell: this row falls back to the spec for that input
            keys = tuple(name for name, value in zip(names, values, strict=True) if value is not None)
            yield keys, tuple(value for value in values if value is not None)
        else:
            yield names, values


def _encode_column(values: list[Any]) -> list[str | None]:
    """A column's values as canonical JSON text (None stays None); repeated values are encoded once."""
    if all(isinstance(value, str) for value in values):
        return list(map(encode_basestring, values))
    memo: dict[tuple[type, Any], str] = {}
    out: list[str | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        key = (type(value), value)
        text = memo.get(key)
        if text is None:
            text = memo[key] = _encode_value(value)
        out.append(text)
    return out


def grid_batches(spec: SweepSpec, carried: bool) -> Iterator[GridBatch]:
    if spec.prompts is None:  # a template alone: one row that sets nothing, its prompt the template's
        return iter([GridBatch([1], "template", {"prompt": [None]})])
    ctx = GridContext(spec.prompts, spec.model_schemas(), spec.base_dir, template=spec.template is not None)
    # Rendering may need the grid's other columns: a placeholder takes a cell of its own name.
    return iter_grid(ctx, GRID_BATCH_ROWS, carried=carried or prompt_axes(spec).active)


def to_job(
    version: str, batch: GridBatch, digest: bytes, variant: Variant, row: int, choice: Choice | None
) -> Job:
    names = variant.input_names  # in a study of several models, the row's inputs this model has
    own = {
        name: values[row]
        for name, values in batch.inputs.items()
        if values[row] is not None and name in names
    }
    carried = {name: values[row] for name, values in batch.carried.items()}
    if choice is None:
        return Job(digest.hex(), variant.model, {**variant.inputs, **own}, version, carried)
    plan, flat, prompt = choice
    zipped = {name: value for name, value in plan.inputs(flat).items() if name in names}
    inputs = {**variant.inputs, **zipped, **own, "prompt": prompt}
    variables = plan.variables(flat)
    return Job(digest.hex(), variant.model, inputs, version, carried, variables, plan.template.text)


def iter_job_batches(spec: SweepSpec, batch_size: int = 5000) -> Iterator[list[Job]]:
    """All distinct jobs of a spec in lists of at most `batch_size`; the grid is read as they are needed."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    expander = Expander(spec)
    jobs = (
        to_job(spec.version, batch, *expanded)
        for batch in grid_batches(spec, carried=True)
        for expanded in expander.expand(batch)
    )
    while chunk := list(itertools.islice(jobs, batch_size)):
        yield chunk
