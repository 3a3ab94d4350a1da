"""The spec's three stages as frozen pydantic models: its keys, the loaded spec, the checked spec.

`SpecKeys` is the YAML's keys, what each accepts checked as it is read. Key names are a public contract
(tools outside promptgrid write them); an unknown key is an error. `LoadedSpec` adds where the keys came
from (text, hash, value sources, lines, each setting's origin); `SweepSpec`, the checked spec, adds the
models' schemas it was checked against. Each stage is made whole by `promptgrid.spec.load` from the one
before (`next_stage`) and never changed after. Which input names and values a model accepts is its
schema's to say, once the models are resolved: `SpecKeys` checks only the spec's own shape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from promptgrid import defaults
from promptgrid.errors import UnknownModel
from promptgrid.locations import check_output, check_quota_url
from promptgrid.models.catalog import INPUT_NAMES, ModelCatalog, builtin_catalog
from promptgrid.models.schema import ModelSchema, names_of
from promptgrid.models.slugs import canonical_slug
from promptgrid.spec.axes import MAX_VARIANTS, NOT_SPEC_INPUTS, parse_axes, parse_seeds
from promptgrid.spec.sources import ResolvedSources, where
from promptgrid.spec.split import SplitShares
from promptgrid.spec.template import variable_keys
from promptgrid.spec.verdict import ANY_FAILURE, FailWhen

# `fail_when: any | never | ratio > 0.05`, read into a FailWhen and written back as text.
FailWhenSetting = Annotated[FailWhen, BeforeValidator(FailWhen.parse), PlainSerializer(str)]

OVERRIDE_KEYS = (
    "output",
    "api.base_url",
    "api.rate_limit",
    "api.max_concurrent",
    "api.polls_count",
    "api.quota_url",
    "max_jobs",
    "api.max_cost",
    "api.stall_timeout",
)
# A run of more jobs than this is refused before anything is sent, unless the spec or --max-jobs raises it.
DEFAULT_MAX_JOBS = 1_000_000
# Combinations of template variables per row: streamed, never held, so only the run's length bounds them.
MAX_PROMPT_COMBINATIONS = 10_000_000
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


StageT = TypeVar("StageT", bound="SpecKeys")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Frozen):
    """At most `requests` API requests in any `window_s` seconds; written "60/60s", "60/6s" or "100/1m".

    "auto" (`requests` None) is no cap until the API shows one; the engine then adopts what it saw.
    """

    requests: int | None
    window_s: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() == "auto":
            return {"requests": None, "window_s": defaults.RATE_LIMIT_WINDOW_S}
        match = _RATE.match(value)
        if not match or (match.group(2) is None and match.group(3) is None):
            raise ValueError(
                f"{value!r} is not a rate; expected auto, or requests/window such as 60/60s, 60/6s, 100/1m"
            )
        amount = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3) or "s"]
        return {"requests": int(match.group(1)), "window_s": amount}

    @model_validator(mode="after")
    def _positive(self) -> RateLimit:
        if (self.requests is not None and self.requests < 1) or self.window_s <= 0:
            raise ValueError("a rate needs at least 1 request per window longer than 0 s")
        return self

    @property
    def auto(self) -> bool:
        return self.requests is None

    def __str__(self) -> str:
        return "auto" if self.requests is None else f"{self.requests}/{self.window_s:g}s"


class ApiConfig(_Frozen):
    """Where the API is and the quota to keep: requests per window and predictions in flight per key.

    `rate_limit` defaults to auto: no request-rate cap until the API shows one (see
    promptgrid.engine.limits); `max_concurrent` always holds.
    """

    base_url: str = defaults.API_BASE
    rate_limit: RateLimit = RateLimit(requests=None, window_s=defaults.RATE_LIMIT_WINDOW_S)
    # strict: YAML's `true` is not 1
    max_concurrent: int = Field(default=defaults.MAX_CONCURRENT, strict=True)
    polls_count: bool = True
    # While creates are free of any cap: send a waiting create ahead to find the room a finish made at the
    # API before our poll sees it (promptgrid.quota.adaptive.SlotGate); refused ones are free but visible.
    room_probes: bool = True
    # Where polls count toward a cap: see predictions end in the executions listing, one request for all of
    # them (promptgrid.engine.ends_watch); false polls each one, for an account whose listing is unreliable.
    listing_watch: bool = True
    quota_url: str | None = None  # redis://... when several runs share one key's quota
    max_cost: float | None = Field(default=None, gt=0)  # USD caps and price: promptgrid.engine.spend
    max_cost_per_day: float | None = Field(default=None, gt=0)
    price_per_image: float | None = Field(default=None, ge=0)
    stall_timeout: float = Field(default=600.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("max_concurrent")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value} is below 1; at least one prediction must be allowed in flight")
        return value

    @field_validator("quota_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return None if value is None else check_quota_url(value)


class SpecKeys(_Frozen):
    """The spec's keys as written (after overrides): the model(s), the grid and/or template, defaults, sweep
    and zip axes (inputs and template variables), seeds, output, API limits and the run's bounds."""

    name: str
    model: str  # promptgrid's name for it (the dashed slug); with a `model` sweep or zip axis, the first
    version: str = defaults.MODEL_VERSION
    prompts: Path | None = None  # absolute, resolved against the spec file's folder
    template: str | None = None  # the prompt of every row whose grid gives none; `{name}` are variables
    inputs: dict[str, Any] = {}
    sweep: dict[str, tuple[Any, ...]] = {}
    zip: dict[str, tuple[Any, ...]] = {}
    seeds: tuple[int, ...] = (0,)
    output: str
    api: ApiConfig = ApiConfig()
    fail_when: FailWhenSetting = ANY_FAILURE  # when the run's Prefect state is Failed (and the exit code 1)
    # strict: YAML's `true` is not 1
    max_jobs: int = Field(default=DEFAULT_MAX_JOBS, strict=True)  # a run of more jobs is refused
    split: SplitShares = None  # {train: 0.9, test: 0.1}: dataset splits by job id, for `promptgrid export`
    # scorers run on each shard's images once they are stored (promptgrid.score; docs/scores.md)
    score: tuple[Annotated[str, Field(pattern="^(pixels|clip|aesthetic)$")], ...] = ()

    @property
    def variables(self) -> tuple[str, ...]:
        """The sweep and zip keys that are template variables (not inputs of the models), in spec order."""
        return variable_keys([*self.sweep, *self.zip], self.input_names)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input of the spec's models (and `model`); before they are resolved, the built-in table's
        for models it does not know."""
        try:
            return (*names_of(self.model_schemas()), "model")
        except UnknownModel:
            return (*INPUT_NAMES, "model")

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the jobs run on, by promptgrid's name (the dashed slug)."""
        axis = self.sweep.get("model") or self.zip.get("model")
        return tuple(dict.fromkeys(axis)) if axis else (self.model,)

    def schema_catalog(self) -> ModelCatalog:
        """The models' schemas known at this stage: the built-in table until the spec is checked."""
        return builtin_catalog()

    def model_schemas(self) -> tuple[ModelSchema, ...]:
        catalog = self.schema_catalog()
        return tuple(catalog.get(slug) for slug in self.models)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name is empty")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the model slug is empty")
        return canonical_slug(value)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the template is empty")
        return value

    _axes = field_validator("sweep", "zip", mode="before")(parse_axes)
    _seeds = field_validator("seeds", mode="before")(parse_seeds)
    _output = field_validator("output")(check_output)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            for key in value:
                if key in NOT_SPEC_INPUTS:
                    raise ValueError(f"{key!r} cannot be a default input; {NOT_SPEC_INPUTS[key]}")
                if key == "model":
                    raise ValueError("'model' cannot be a default input; use the model key or a model axis")
        return value

    @field_validator("max_jobs")
    @classmethod
    def _max_jobs(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value} is below 1; a run needs room for at least one job")
        return value

    @model_validator(mode="after")
    def _axes_agree(self) -> SpecKeys:
        both = set(self.sweep) & set(self.zip)
        if both:
            raise ValueError(f"{', '.join(sorted(both))} is both a sweep and a zip axis; choose one")
        lengths = {key: len(values) for key, values in self.zip.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{key} has {n}" for key, n in lengths.items())
            raise ValueError(f"zip lists must have equal lengths: {shown}")
        self.count_variants()
        return self

    def count_variants(self) -> None:
        """ValueError when a row would expand into too many jobs or prompts (which keys are inputs and which
        template variables follows the models: checked again once they are resolved)."""
        lengths = {key: len(values) for key, values in self.zip.items()}
        variables = set(self.variables)
        # A zip with a variable in it advances with the prompt's variables, not with the inputs.
        zip_steps = max(lengths.values(), default=1)
        zip_is_prompt = bool(variables & set(self.zip))
        variants = math.prod(len(v) for k, v in self.sweep.items() if k not in variables) * len(self.seeds)
        variants *= 1 if zip_is_prompt else zip_steps
        if variants > MAX_VARIANTS:
            raise ValueError(
                f"sweep × zip × seeds make {variants:,} jobs per row; at most {MAX_VARIANTS:,} allowed"
            )
        prompts = math.prod(len(v) for k, v in self.sweep.items() if k in variables)
        prompts *= zip_steps if zip_is_prompt else 1
        if prompts > MAX_PROMPT_COMBINATIONS:
            raise ValueError(
                f"the template variables make {prompts:,} prompts per row; "
                f"at most {MAX_PROMPT_COMBINATIONS:,} allowed"
            )


class LoadedSpec(SpecKeys):
    """A spec read and its shape checked: its keys, and where it came from (its text, hash, value sources,
    lines and the origin of each setting). Made once by `promptgrid.spec.load`; never changed after."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    source_path: Path = Path("spec.yaml")
    source_name: str = "spec.yaml"  # the name messages give it: the path as typed, or `spec` for a dict
    base_dir: Path = Path(".")  # where relative paths in it start: its own folder, for a file
    source_text: str = Field(default="", repr=False)  # the YAML as written, to save beside the manifest
    spec_hash: str = ""  # sha256 of the canonical spec after overrides
    setting_origins: Mapping[str, str] = {}  # per overridable setting: its flag, environment, spec, default
    # "sweep.cfg[2]" -> its line; None for a spec given as data
    lines: Mapping[str, int] | None = Field(default=None, repr=False)
    sources: ResolvedSources = Field(default=ResolvedSources({}), repr=False)  # wildcard files, samples
    named_models: tuple[tuple[str, str], ...] = ()  # (where, slug as spelt) per model the spec names

    @property
    def requested_models(self) -> tuple[str, ...]:
        """The models as the spec spells them, for resolution to ask the API about first."""
        return tuple(dict.fromkeys(slug for _, slug in self.named_models)) or self.models

    def where(self, key: str) -> str:
        """Where a key is, for a message: `spec.yaml line 7: sweep.cfg[2]`, or `spec: sweep.cfg[2]` when the
        spec has no lines (given as a dict)."""
        return where(self.source_name, self.lines or {}, key)


class SweepSpec(LoadedSpec):
    """A checked spec: a loaded spec with the models' schemas it was checked against (`check_spec`), every
    input value, grid row and template of it allowed by them."""

    catalog: ModelCatalog = Field(default_factory=builtin_catalog, repr=False)
    grid_templates: bool = False  # some grid prompt is itself a template (has braces)

    def schema_catalog(self) -> ModelCatalog:
        return self.catalog


def next_stage(stage: type[StageT], previous: SpecKeys, **added: Any) -> StageT:
    """The next stage of a spec: `previous`'s values (already checked) and what this stage adds."""
    values = {name: getattr(previous, name) for name in type(previous).model_fields}
    return stage.model_construct(**{**values, **added})
