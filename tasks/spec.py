"""The sweep spec: its YAML keys as frozen pydantic models, and loading that checks it and every grid row.

Key names are a public contract (tools outside promptgrid write them); an unknown key is an error. Every
problem found (spec keys, input values for every model swept, grid rows) is reported together in one
InvalidInput, before anything is sent to the API.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from promptgrid.errors import InvalidInput
from promptgrid.models import DEFAULT_VERSION, INPUT_NAMES, SEED_MAX, ModelSchema, UnknownModel, get_model
from tasks.grid import GridContext, ProblemLog, check_value, display_path, validate_grid

OVERRIDE_KEYS = ("output", "api.base_url", "api.rate_limit", "api.max_concurrent", "api.polls_count")
AXIS_NAMES = tuple(name for name in INPUT_NAMES if name not in ("prompt", "seed")) + ("model",)
MAX_RANGE_VALUES = 10_000
# Combinations every row is expanded into (axes × zip × seeds): they are held in memory, rows are not.
MAX_VARIANTS = 100_000
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Frozen):
    """At most `requests` API requests in any `window_s` seconds; written "60/60s", "60/6s" or "100/1m"."""

    requests: int
    window_s: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _RATE.match(value)
        if not match or (match.group(2) is None and match.group(3) is None):
            raise ValueError(
                f"{value!r} is not a rate; expected requests/window such as 60/60s, 60/6s, 100/1m"
            )
        amount = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3) or "s"]
        return {"requests": int(match.group(1)), "window_s": amount}

    @model_validator(mode="after")
    def _positive(self) -> RateLimit:
        if self.requests < 1 or self.window_s <= 0:
            raise ValueError("a rate needs at least 1 request per window longer than 0 s")
        return self

    def __str__(self) -> str:
        return f"{self.requests}/{self.window_s:g}s"


class ApiConfig(_Frozen):
    """Where the API is and the quota to keep: requests per window and predictions in flight per key."""

    base_url: str = "https://api.eachlabs.ai"
    rate_limit: RateLimit = RateLimit(requests=60, window_s=60.0)
    max_concurrent: int = Field(10, strict=True)  # strict: YAML's `true` must not read as 1
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
        if value is not None and not re.match(r"^rediss?://", value):
            raise ValueError(f"{value!r} is not a redis:// or rediss:// URL")
        return value


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
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping of input name to values")
    for key in value:
        if key == "seed":
            raise ValueError("'seed' is not an axis; use seeds: [..] or seeds: {count, start}")
        if key not in AXIS_NAMES:
            raise ValueError(
                f"{key!r} is not an input that can be swept; expected one of {', '.join(AXIS_NAMES)}"
            )
    return {key: _axis_values(key, axis) for key, axis in value.items()}


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


def check_output(value: str) -> str:
    """A local folder or s3://bucket/prefix; a URI of any other scheme, or without a bucket, is an error."""
    if not value.strip():
        raise ValueError("the output location is empty")
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise ValueError(f"{value!r} names no valid bucket; expected s3://bucket/prefix")
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value):
        raise ValueError(f"{value!r} is not a local folder or s3://bucket/prefix")
    return value


class SweepSpec(_Frozen):
    """A checked spec: the model(s), the grid, defaults, sweep and zip axes, seeds, output and API limits."""

    name: str
    model: str  # canonical slug; with a `model` sweep or zip axis, the first of it
    version: str = DEFAULT_VERSION
    prompts: Path  # absolute, resolved against the spec file's folder
    inputs: dict[str, Any] = {}
    sweep: dict[str, tuple[Any, ...]] = {}
    zip: dict[str, tuple[Any, ...]] = {}
    seeds: tuple[int, ...] = (0,)
    output: str
    api: ApiConfig = ApiConfig()

    _source_path: Path = PrivateAttr(default=Path("spec.yaml"))
    _source_text: str = PrivateAttr(default="")
    _spec_hash: str = PrivateAttr(default="")
    _base_dir: Path = PrivateAttr(default=Path("."))

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
    def base_dir(self) -> Path:
        """The folder relative paths in the spec start from: its own, for the grid and local images."""
        return self._base_dir

    @property
    def models(self) -> tuple[str, ...]:
        """Every model slug the jobs run on."""
        axis = self.sweep.get("model") or self.zip.get("model")
        return tuple(dict.fromkeys(get_model(m).slug for m in axis)) if axis else (self.model,)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the name is empty")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        try:
            return get_model(value).slug
        except UnknownModel as exc:
            raise ValueError(exc.args[0]) from None

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
                if key == "seed":
                    raise ValueError(
                        "'seed' cannot be a default input; use seeds: [..] or seeds: {count, start}"
                    )
                if key not in AXIS_NAMES or key == "model":
                    names = ", ".join(name for name in AXIS_NAMES if name != "model")
                    raise ValueError(f"{key!r} cannot be a default input; expected one of {names}")
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
        variants = math.prod(len(values) for values in self.sweep.values()) * len(self.seeds)
        variants *= max(lengths.values(), default=1)
        if variants > MAX_VARIANTS:
            raise ValueError(
                f"sweep × zip × seeds make {variants:,} jobs per row; at most {MAX_VARIANTS:,} allowed"
            )
        return self

    def model_schemas(self) -> tuple[ModelSchema, ...]:
        return tuple(get_model(slug) for slug in self.models)


def _yaml_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate keys (PyYAML keeps the last silently, hiding a typo'd copy)."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def _parse_yaml(text: str, source_name: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput([f"{source_name}{where}: not valid YAML ({problem})"]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise InvalidInput(
            [f"{source_name}: the spec is {kind}; expected a mapping of keys such as name, model"]
        )
    return data


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], source_name: str) -> dict[str, Any]:
    data = dict(data)
    for key, value in overrides.items():
        if key not in OVERRIDE_KEYS:
            raise InvalidInput(
                [f"{source_name}: cannot override {key!r}; expected one of {', '.join(OVERRIDE_KEYS)}"]
            )
        if key == "output":
            data["output"] = value
            continue
        api = data.get("api")
        api = dict(api) if isinstance(api, Mapping) else {}
        api[key.split(".", 1)[1]] = value
        data["api"] = api
    return data


def _describe_validation_error(exc: ValidationError, source_name: str) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key {where.rsplit('.', 1)[-1]!r}; keys are not guessed, check the spelling"
        elif error["type"] == "missing":
            message = "is required"
        elif (
            "input" in error
            and not isinstance(error["input"], dict | list)
            and error["type"] != "value_error"
        ):
            message = f"{error['input']!r}: {message}"
        problems.append(f"{source_name}: {where}: {message}")
    return problems


def _check_values(spec: SweepSpec, base_dir: Path, source_name: str, log: ProblemLog) -> None:
    """Check every default, sweep and zip value against every model the jobs run on."""
    models = spec.model_schemas()
    entries = [(f"inputs.{key}", key, value) for key, value in spec.inputs.items()]
    for section in ("sweep", "zip"):
        for key, values in getattr(spec, section).items():
            entries.extend((f"{section}.{key}[{i}]", key, value) for i, value in enumerate(values))
    for where, key, value in entries:
        if key == "model":
            continue
        _, allowed = check_value(models, key, value, base_dir)
        if allowed is None and value in (None, ""):
            allowed = "a value (leave the key out to use the default)"
        if allowed is not None and key == "aspect_ratio" and isinstance(value, int):
            allowed += ' (quote it, as "1:1": YAML reads an unquoted 1:1 as the number 61)'
        if allowed is not None:
            log.add(f"{source_name}: {where}: {value!r} is not allowed; expected {allowed}")


def _model_axis_problems(data: Mapping[str, Any], source_name: str) -> list[str]:
    problems = []
    for section in ("sweep", "zip"):
        axis = data.get(section)
        values = axis.get("model") if isinstance(axis, Mapping) else None
        for index, slug in enumerate(values if isinstance(values, list) else []):
            try:
                get_model(slug)
            except UnknownModel as exc:
                problems.append(f"{source_name}: {section}.model[{index}]: {exc.args[0]}")
    return problems


def _fill_defaults(data: dict[str, Any], base_dir: Path, source_name: str) -> dict[str, Any]:
    data = dict(data)
    data.setdefault("name", Path(source_name).stem)
    if data.get("prompts") == "":
        del data["prompts"]  # reported as missing, not read as the spec's own folder
    if "model" not in data:
        for section in ("sweep", "zip"):
            axis = data.get(section)
            if isinstance(axis, Mapping) and isinstance(axis.get("model"), list) and axis["model"]:
                data["model"] = axis["model"][0]
    name = data["name"] if isinstance(data.get("name"), str) else Path(source_name).stem
    data.setdefault("output", f"out/{name}")
    if isinstance(data.get("prompts"), str) and data["prompts"].strip():
        data["prompts"] = (base_dir / data["prompts"]).resolve()
    return data


def _spec_hash(spec: SweepSpec, prompts_as_written: Any) -> str:
    canonical = spec.model_dump(mode="json")
    # The grid as written, not its absolute path: the same spec hashes alike on every machine.
    canonical["prompts"] = str(prompts_as_written)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_spec_text(
    text: str, base_dir: Path, source_name: str, overrides: Mapping[str, Any] | None = None
) -> SweepSpec:
    """Parse and check a spec given as text, and every grid row; relative paths resolve against base_dir."""
    raw = _parse_yaml(text, source_name)
    data = _fill_defaults(_apply_overrides(raw, overrides or {}, source_name), base_dir, source_name)
    problems = _model_axis_problems(data, source_name)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(problems + _describe_validation_error(exc, source_name)) from None
    if problems:
        raise InvalidInput(problems)
    log = ProblemLog()
    _check_values(spec, base_dir, source_name, log)
    if spec.prompts.is_file():
        validate_grid(GridContext(spec.prompts, spec.model_schemas(), base_dir), log)
    else:
        reason = "is a directory" if spec.prompts.is_dir() else "does not exist"
        shown = display_path(spec.prompts)
        log.add(f"{source_name}: prompts: {shown} {reason} (a relative path starts at the spec's folder)")
    log.raise_if_any()
    spec._source_path = Path(source_name)
    spec._base_dir = base_dir
    spec._source_text = text
    spec._spec_hash = _spec_hash(spec, raw.get("prompts"))
    return spec


def load_spec(path: Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read, parse and check a spec file and every row of its grid; InvalidInput lists all problems found."""
    path = Path(path)
    shown = display_path(path.absolute())
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput([f"{shown}: the spec file does not exist"]) from None
    except IsADirectoryError:
        raise InvalidInput([f"{shown}: is a directory, not a spec file"]) from None
    except UnicodeDecodeError as exc:
        raise InvalidInput([f"{shown}: byte {exc.start + 1} is not UTF-8; save the spec as UTF-8"]) from None
    except OSError as exc:
        raise InvalidInput([f"{shown}: cannot read the spec file ({exc.strerror})"]) from None
    spec = load_spec_text(text, path.absolute().parent, shown, overrides)
    spec._source_path = path.absolute()
    return spec
