"""Loading a spec: YAML parsed strictly, overrides applied, then the spec and every grid row checked.

Every problem found (spec keys, input values for every model swept, grid rows) is reported together in one
InvalidInput, before anything is sent to the API.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from promptgrid.errors import InvalidInput, UnknownModel
from promptgrid.tasks.models.catalog import get_model
from promptgrid.tasks.spec.checks import check_value, validate_grid
from promptgrid.tasks.spec.grid import GridContext
from promptgrid.tasks.spec.overrides import setting_origins
from promptgrid.tasks.spec.problems import ProblemLog, display_path
from promptgrid.tasks.spec.schema import OVERRIDE_KEYS, ApiConfig, SweepSpec
from promptgrid.tasks.spec.sources import resolve_sources
from promptgrid.tasks.spec.template_checks import TemplateChecker

# The keys each section of a spec knows, for "did you mean" on a misspelt one.
_SECTION_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): tuple(SweepSpec.model_fields),
    ("api",): tuple(ApiConfig.model_fields),
}


def _yaml_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate keys (PyYAML keeps the last silently, hiding a typo'd copy)."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(
        loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
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


def unknown_key_message(section: tuple[str, ...], key: object) -> str:
    """An unknown key's problem, with the nearest known key of its section when one is close."""
    known = _SECTION_KEYS.get(section, ())
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    listed = f"; expected one of {', '.join(known)}" if known else ""
    return f"unknown key {key!r}{listed}"


def _describe_validation_error(
    exc: ValidationError, source_name: str, origins: Mapping[str, str] | None = None
) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        origin = (origins or {}).get(where, "spec")
        if origin not in ("spec", "default"):
            where = f"{where} (from {origin})"
        if error["type"] == "extra_forbidden":
            loc = tuple(str(part) for part in error["loc"])
            message = unknown_key_message(loc[:-1], loc[-1])
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
    models, variables = spec.model_schemas(), set(spec.variables)
    entries = [(f"inputs.{key}", key, value) for key, value in spec.inputs.items()]
    for section in ("sweep", "zip"):
        for key, values in getattr(spec, section).items():
            entries.extend((f"{section}.{key}[{i}]", key, value) for i, value in enumerate(values))
    for where, key, value in entries:
        if key == "model" or key in variables:  # variables are text for the template, checked there
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
                problems.append(f"{source_name}: {section}.model[{index}]: {exc.message}")
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
    canonical = spec.model_dump(mode="json", exclude={"fail_when"})  # how a run is judged, not what it makes
    # The grid as written, not its absolute path: the same spec hashes alike on every machine.
    canonical["prompts"] = str(prompts_as_written)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_spec_text(
    text: str,
    base_dir: Path,
    source_name: str,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Parse and check a spec given as text, and every grid row; relative paths resolve against base_dir.

    `overrides` are the flags, `environment` the settings the environment sets
    (`promptgrid.settings.environment_overrides`): a flag wins over the environment, which wins over the spec.
    """
    raw = _parse_yaml(text, source_name)
    flags, environment = dict(overrides or {}), dict(environment or {})
    layered = {**environment, **flags}
    data = _fill_defaults(_apply_overrides(raw, layered, source_name), base_dir, source_name)
    origins = setting_origins(raw, flags, environment)
    sources = resolve_sources(data, base_dir, source_name, text)  # wildcard files and samples, as lists
    problems = _model_axis_problems(data, source_name)
    if "prompts" not in data and "template" not in data:
        problems.append(f"{source_name}: prompts: is required (a CSV or Parquet grid), unless a template: is")
    try:
        spec = SweepSpec.model_validate(sources.data)
    except ValidationError as exc:
        raise InvalidInput(
            sources.problems + problems + _describe_validation_error(exc, source_name, origins)
        ) from None
    if problems:
        raise InvalidInput(sources.problems + problems)
    log = ProblemLog()
    for problem in sources.problems:
        log.add(problem)
    _check_values(spec, base_dir, source_name, log)
    if spec.prompts is not None and spec.prompts.is_file():
        ctx = GridContext(spec.prompts, spec.model_schemas(), base_dir, template=spec.template is not None)
        validate_grid(ctx, log)
    elif spec.prompts is not None:
        reason = "is a directory" if spec.prompts.is_dir() else "does not exist"
        shown = display_path(spec.prompts)
        log.add(f"{source_name}: prompts: {shown} {reason} (a relative path starts at the spec's folder)")
    spec._base_dir = base_dir
    spec._grid_templates = TemplateChecker(spec, sources, source_name, log).check()
    log.raise_if_any()
    spec._source_path = Path(source_name)
    spec._base_dir = base_dir
    spec._source_text = text
    spec._spec_hash = _spec_hash(spec, raw.get("prompts"))
    spec._setting_origins = origins
    return spec


def load_spec(
    path: Path, overrides: Mapping[str, Any] | None = None, environment: Mapping[str, Any] | None = None
) -> SweepSpec:
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
    spec = load_spec_text(text, path.absolute().parent, shown, overrides, environment)
    spec._source_path = path.absolute()
    return spec
