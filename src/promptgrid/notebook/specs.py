"""A spec from Python: loaded from a file or a dict with the command line's checks, and its dry-run plan."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from promptgrid.defaults import PRICE_PER_IMAGE_USD, TYPICAL_LATENCY_S
from promptgrid.engine.estimate import describe_plan, estimate_run, planned_images
from promptgrid.errors import InvalidInput
from promptgrid.settings import environment_overrides
from promptgrid.spec.expand import plan_jobs
from promptgrid.spec.load import load_spec as load_spec_file
from promptgrid.spec.load import load_spec_text
from promptgrid.spec.problems import display_path
from promptgrid.spec.schema import SweepSpec

# What every function taking a spec accepts: a YAML file, the spec's keys as a dict, or a loaded spec.
SpecSource: TypeAlias = str | os.PathLike[str] | Mapping[str, Any] | SweepSpec

# The name a spec given as a dict goes by in messages, as a file's path would.
DICT_SPEC_NAME = "spec"


def load_spec(spec: SpecSource, *, base_dir: str | os.PathLike[str] | None = None) -> SweepSpec:
    """Load and check a spec, and every row of its grid, as `promptgrid run` does before it sends anything.

    `spec` is the path of a YAML spec, or a dict of the same keys (`name`, `model`, `prompts`, `sweep`,
    `seeds`, `output`, `api`, ...; see docs/specs.md); a spec already loaded is returned as it is. Relative
    paths in a dict start from `base_dir` (the working directory by default), in a file from its folder.

    Raises `promptgrid.errors.InvalidInput` listing every problem found (its `problems`), each message the
    same as the command line prints: the file (or `spec` for a dict), the key or grid row, what is allowed.
    """
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping):
        try:
            text = yaml.safe_dump(_plain(spec), sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as exc:
            raise InvalidInput([f"{DICT_SPEC_NAME}: cannot be written as YAML ({exc})"]) from None
        folder = Path(base_dir if base_dir is not None else Path.cwd()).absolute()
        return load_spec_text(text, folder, DICT_SPEC_NAME)
    if isinstance(spec, str | os.PathLike):
        return load_spec_file(Path(spec))
    raise InvalidInput([f"a spec is a YAML file's path or a dict of its keys, not {type(spec).__name__}"])


def _plain(value: Any) -> Any:
    """The dict as YAML can write it: paths as text, tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def effective_spec(spec: SweepSpec, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """The spec with the settings a run would use: `overrides` (the arguments) over the environment's
    (EACHLABS_API_BASE, ...) over the spec's own, as the command line layers its flags."""
    environment = environment_overrides()
    if not overrides and not environment:
        return spec
    name = display_path(spec_file_name(spec))
    return load_spec_text(spec.source_text, spec.base_dir, name, overrides, environment)


def spec_file_name(spec: SweepSpec) -> Path:
    """The spec's file, or for a spec built from a dict the name it goes by inside its base folder."""
    return spec.base_dir / spec.source_path


@dataclass(frozen=True)
class Plan:
    """What running a spec would take, as `promptgrid run --dry-run` says it: `str(plan)` is that text."""

    spec_name: str
    jobs: int  # distinct jobs (identical ones collapsed)
    rows: int  # grid rows
    distinct_prompts: int
    variants_per_row: int
    duplicates_collapsed: int
    models: tuple[str, ...]
    creates: int
    polls: int  # expected polls, once the engine has learned the latency
    requests: int  # creates + polls
    counted_requests: int  # the requests that count toward the rate limit
    seconds: float  # estimated wall time at the spec's limits
    seconds_if_polls_free: float
    bound_by: str  # "rate limit" or "concurrency"
    cost_usd: float
    text: str

    def __str__(self) -> str:
        return self.text


def plan(
    spec: SpecSource,
    *,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    latency_s: float = TYPICAL_LATENCY_S,
) -> Plan:
    """Count a spec's jobs and estimate its API requests, time and cost; nothing is sent to the API.

    The same figures and text as `promptgrid run SPEC --dry-run`, settings from the environment included
    (EACHLABS_API_BASE, ...); `spec` is anything `load_spec` takes.
    """
    loaded = effective_spec(load_spec(spec))
    jobs = plan_jobs(loaded)
    images = planned_images(loaded, jobs.total_jobs)
    estimate = estimate_run(jobs.total_jobs, loaded.api, price_per_image, latency_s, images=images)
    return Plan(
        spec_name=loaded.name,
        jobs=jobs.total_jobs,
        rows=jobs.rows,
        distinct_prompts=jobs.distinct_prompts,
        variants_per_row=jobs.variants_per_row,
        duplicates_collapsed=jobs.duplicates_collapsed,
        models=jobs.models,
        creates=estimate.creates,
        polls=estimate.polls,
        requests=estimate.requests,
        counted_requests=estimate.counted_requests,
        seconds=estimate.seconds,
        seconds_if_polls_free=estimate.seconds_if_polls_free,
        bound_by=estimate.bound_by,
        cost_usd=estimate.cost_usd,
        text=describe_plan(loaded, jobs, estimate, price_per_image, latency_s),
    )
