"""Expanding grid rows × sweep × zip × seeds into Jobs with deterministic ids, identical jobs collapsed.

A job's inputs come from, last one winning: the model's defaults, the spec's `inputs`, the sweep and zip
axes and seed, then the row's own input columns (an empty cell falls back). The job id is a hash of model,
version and those normalised inputs, so neither row nor axis order changes it; carried columns do not
enter it. Rows are read in batches and only 16-byte digests are kept for dedup, so a grid of millions of
rows never sits in memory as jobs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from promptgrid.tasks.models.catalog import get_model
from promptgrid.tasks.spec.checks import check_value, iter_grid
from promptgrid.tasks.spec.grid import GridBatch, GridContext
from promptgrid.tasks.spec.schema import SweepSpec
from promptgrid.types import Job

ID_BYTES = 16  # the job id is the first 32 hex characters of the sha256
GRID_BATCH_ROWS = 50_000

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


def _normalised(spec: SweepSpec, name: str, raw: Any) -> Any:
    value, allowed = check_value(spec.model_schemas(), name, raw, spec.base_dir)
    if allowed is not None:  # load_spec rejects these; a spec built by hand may not have been through it
        raise ValueError(f"{name}: {raw!r} is not allowed; expected {allowed}")
    return value


def _axis_combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the sweep axes, each with every step of the zip axes."""
    sweep_keys = list(spec.sweep)
    products = [
        dict(zip(sweep_keys, values, strict=True)) for values in itertools.product(*spec.sweep.values())
    ]
    zip_keys = list(spec.zip)
    steps = [dict(zip(zip_keys, values, strict=True)) for values in zip(*spec.zip.values(), strict=True)]
    return [{**product, **step} for product in products for step in (steps or [{}])]


def build_variants(spec: SweepSpec) -> list[Variant]:
    """The combinations every row is expanded into, in spec order (models, axes, then seeds)."""
    variants = []
    for combination in _axis_combinations(spec):
        model = get_model(combination.pop("model", spec.model))
        base = model.default_inputs()
        for name, raw in {**spec.inputs, **combination}.items():
            base[name] = _normalised(spec, name, raw)
        for seed in spec.seeds:
            inputs = {key: value for key, value in {**base, "seed": seed}.items() if value is not None}
            variants.append(Variant(model.slug, inputs))
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


class _Expander:
    """Expands rows into job digests, keeping the digests seen; per job only a %-format and a hash."""

    def __init__(self, spec: SweepSpec):
        self.variants = build_variants(spec)
        self.version = spec.version
        self.seen: set[bytes] = set()
        self._templates: dict[tuple[str, ...], list[str]] = {}

    def templates(self, own_keys: tuple[str, ...]) -> list[str]:
        found = self._templates.get(own_keys)
        if found is None:
            found = [_template(v.model, self.version, v.inputs, own_keys) for v in self.variants]
            self._templates[own_keys] = found
        return found

    def expand(self, batch: GridBatch) -> Iterator[tuple[bytes, Variant, int]]:
        """Jobs not seen before, row by row, variants in spec order, as (digest, variant, row)."""
        sha256, seen, variants = hashlib.sha256, self.seen, self.variants  # this loop runs once per job
        for row, (keys, values) in enumerate(_encoded_rows(batch)):
            for variant, template in zip(variants, self.templates(keys), strict=True):
                digest = sha256((template % values).encode("utf-8")).digest()[:ID_BYTES]
                if digest not in seen:
                    seen.add(digest)
                    yield digest, variant, row

    def count(self, batch: GridBatch) -> None:
        """Add the digests of the batch's jobs to `seen`, variant by variant: the fast path of plan_jobs."""
        names = tuple(sorted(batch.inputs))
        columns = [_encode_column(batch.inputs[name]) for name in names]
        groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        if any(None in column for column in columns):
            for keys, values in _encoded_rows(batch):
                groups.setdefault(keys, []).append(values)
        else:  # every row sets the same inputs: one group, no per-row bookkeeping
            groups[names] = list(zip(*columns, strict=True))
        sha256 = hashlib.sha256
        for keys, rows in groups.items():
            for template in self.templates(keys):
                self.seen.update(
                    [sha256((template % values).encode()).digest()[:ID_BYTES] for values in rows]
                )


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


def _grid_batches(spec: SweepSpec, carried: bool) -> Iterator[GridBatch]:
    ctx = GridContext(spec.prompts, spec.model_schemas(), spec.base_dir)
    return iter_grid(ctx, GRID_BATCH_ROWS, carried=carried)


def _to_job(version: str, batch: GridBatch, digest: bytes, variant: Variant, row: int) -> Job:
    own = {name: values[row] for name, values in batch.inputs.items() if values[row] is not None}
    carried = {name: values[row] for name, values in batch.carried.items()}
    return Job(digest.hex(), variant.model, {**variant.inputs, **own}, version, carried)


def iter_job_batches(spec: SweepSpec, batch_size: int = 5000) -> Iterator[list[Job]]:
    """All distinct jobs of a spec in lists of at most `batch_size`; the grid is read as they are needed."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    expander = _Expander(spec)
    jobs = (
        _to_job(spec.version, batch, *expanded)
        for batch in _grid_batches(spec, carried=True)
        for expanded in expander.expand(batch)
    )
    while chunk := list(itertools.islice(jobs, batch_size)):
        yield chunk


@dataclass
class JobPlan:
    """What a spec expands to, counted without keeping the jobs: the dry run's figures."""

    total_jobs: int = 0
    distinct_prompts: int = 0
    duplicates_collapsed: int = 0
    rows: int = 0
    variants_per_row: int = 0
    models: tuple[str, ...] = ()
    samples: list[Job] = field(default_factory=list)


def plan_jobs(spec: SweepSpec, samples: int = 3) -> JobPlan:
    """Count the distinct jobs, prompts and collapsed duplicates of a spec; keep the first few as samples.

    Samples carry no grid columns: reading those for every row would only slow the count down.
    """
    expander = _Expander(spec)
    plan = JobPlan(variants_per_row=len(expander.variants), models=spec.models)
    prompts: set[int] = set()  # hashes, not the strings: a million prompts would weigh hundreds of MB
    for batch in _grid_batches(spec, carried=False):
        if len(plan.samples) < samples:  # the first jobs in grid order, found apart from the count
            first = _Expander(spec).expand(batch)
            plan.samples += [_to_job(spec.version, batch, *job) for job in itertools.islice(first, samples)]
            plan.samples = plan.samples[:samples]
        plan.rows += len(batch)
        prompts.update(map(hash, batch.inputs["prompt"]))
        expander.count(batch)
    plan.total_jobs = len(expander.seen)
    plan.distinct_prompts = len(prompts)
    plan.duplicates_collapsed = plan.rows * len(expander.variants) - plan.total_jobs
    return plan
