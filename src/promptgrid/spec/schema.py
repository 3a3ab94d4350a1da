"""The sweep spec's keys as frozen pydantic models: what each key accepts, checked as it is read.

Key names are a public contract (tools outside promptgrid write them); an unknown key is an error. Which
input names and values a model accepts is its schema's to say, once the models are resolved
(`promptgrid.spec.load`): here only the spec's own shape is checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    field_validator,
    model_validator,
)

from promptgrid import defaults
from promptgrid.errors import UnknownModel
from promptgrid.locations import check_output, check_quota_url
from promptgrid.models.catalog import INPUT_NAMES, SEED_MAX, ModelCatalog, builtin_catalog
from promptgrid.models.schema import ModelSchema, names_of
from promptgrid.models.slugs import canonical_slug
from promptgrid.spec.split import SplitShares
from promptgrid.spec.template import variable_keys, variable_name_problem, variable_values
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
)
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
# Combinations of template variables per row: streamed, never held, so only the run's length bounds them.
MAX_PROMPT_COMBINATIONS = 10_000_000
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


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
    quota_url: str | None = None  # redis://... when several runs share one key's quota

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


def _axes(value: Any) -> Any:
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


class SweepSpec(_Frozen):
    """A checked spec: the model(s), the grid and/or template, defaults, sweep and zip axes (inputs and
    template variables), seeds, output and API limits."""

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
    split: SplitShares = None  # {train: 0.9, test: 0.1}: dataset splits by job id, for `promptgrid export`

    _source_path: Path = PrivateAttr(default=Path("spec.yaml"))
    _source_name: str = PrivateAttr(default="spec.yaml")
    _model_entries: tuple[tuple[str, str], ...] = PrivateAttr(default=())
    _requested_models: tuple[str, ...] = PrivateAttr(default=())
    _catalog: ModelCatalog | None = PrivateAttr(default=None)
    _sources: Any = PrivateAttr(default=None)  # the spec's wildcard files and samples (spec.sources)
    _source_text: str = PrivateAttr(default="")
    _spec_hash: str = PrivateAttr(default="")
    _base_dir: Path = PrivateAttr(default=Path("."))
    _grid_templates: bool = PrivateAttr(default=False)
    _setting_origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def source_path(self) -> Path:
        return self._source_path

    @property
    def source_text(self) -> str:
        """The YAML as written, to save beside the manifest."""
        return self._source_text

    @property
    def spec_hash(self) -> str:
        """sha256 of the canonical spec after command-line overrides."""
        return self._spec_hash

    @property
    def setting_origins(self) -> dict[str, str]:
        """Where each overridable setting came from: a flag, an environment variable, `spec`, `default`."""
        return self._setting_origins

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the spec start from: its own, for the grid and local images."""
        return self._base_dir

    @property
    def grid_templates(self) -> bool:
        """Whether some grid prompt is itself a template (has braces): found when the spec was loaded."""
        return self._grid_templates

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

    @property
    def requested_models(self) -> tuple[str, ...]:
        """The models as the spec spells them, for resolution to ask the API about first."""
        return self._requested_models or self.models

    @property
    def catalog(self) -> ModelCatalog:
        """The models' schemas the spec was checked against (the built-in table until it is checked)."""
        return self._catalog or builtin_catalog()

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

    _axes = field_validator("sweep", "zip", mode="before")(_axes)
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

    @model_validator(mode="after")
    def _axes_agree(self) -> SweepSpec:
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

    def model_schemas(self) -> tuple[ModelSchema, ...]:
        return tuple(self.catalog.get(slug) for slug in self.models)
