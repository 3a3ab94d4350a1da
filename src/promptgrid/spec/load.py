"""Loading a spec: YAML parsed strictly, overrides applied, then the spec and every grid row checked.

Loading has two steps, so that the models can be resolved between them: `read_spec` checks the spec's own
shape; `check_spec` checks it against its models' schemas (a catalog: what the API answered, or offline the
built-in table and the user cache) and checks every grid row. Every problem found (spec keys, input values
for every model swept, grid rows) is reported together in one InvalidInput, before anything is sent.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from promptgrid.errors import InvalidInput
from promptgrid.models.catalog import ModelCatalog
from promptgrid.models.records import offline_catalog
from promptgrid.spec.checks import validate_grid
from promptgrid.spec.grid import GridContext, read_layout
from promptgrid.spec.model_checks import check_required, check_study, find_models, model_entries
from promptgrid.spec.overrides import setting_origins
from promptgrid.spec.problems import ProblemLog, display_path
from promptgrid.spec.schema import OVERRIDE_KEYS, ApiConfig, SweepSpec
from promptgrid.spec.sources import resolve_sources
from promptgrid.spec.template_checks import TemplateChecker

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
    canonical = spec.model_dump(mode="json", exclude={"fail_when", "split"})  # not what a run makes
    # The grid as written, not its absolute path: the same spec hashes alike on every machine.
    canonical["prompts"] = str(prompts_as_written)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_spec_text(
    text: str,
    base_dir: Path,
    source_name: str,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Parse a spec given as text and check its shape (not yet its models' inputs, nor the grid).

    `overrides` are the flags, `environment` the settings the environment sets
    (`promptgrid.settings.environment_overrides`): a flag wins over the environment, which wins over the spec.
    """
    raw = _parse_yaml(text, source_name)
    flags, environment = dict(overrides or {}), dict(environment or {})
    layered = {**environment, **flags}
    data = _fill_defaults(_apply_overrides(raw, layered, source_name), base_dir, source_name)
    origins = setting_origins(raw, flags, environment)
    sources = resolve_sources(data, base_dir, source_name, text)  # wildcard files and samples, as lists
    problems = []
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
    spec._sources = sources
    spec._source_path = Path(source_name)
    spec._source_name = source_name
    spec._base_dir = base_dir
    spec._source_text = text
    spec._model_entries = tuple(model_entries(sources.data))
    spec._requested_models = tuple(dict.fromkeys(slug for _, slug in spec._model_entries))
    spec._spec_hash = _spec_hash(spec, raw.get("prompts"))
    spec._setting_origins = origins
    return spec


def check_spec(spec: SweepSpec, catalog: ModelCatalog | None = None) -> SweepSpec:
    """Check a parsed spec against its models' schemas, its templates, and every grid row; the spec, now
    tied to `catalog` (offline, by default: the built-in table and the user cache of `api.base_url`)."""
    catalog = catalog or offline_catalog(spec.api.base_url)
    source, log = spec._source_name, ProblemLog()
    sources = spec._sources or resolve_sources({}, spec.base_dir, source, spec.source_text)
    entries = spec._model_entries or tuple(("model", slug) for slug in spec.models)
    models = find_models(entries, catalog, source, log)
    log.raise_if_any()  # values cannot be checked against a model without its schema
    spec._catalog = catalog
    for problem in sources.problems:
        log.add(problem)
    check_study(spec, models, source, log)
    if spec.prompts is not None and spec.prompts.is_file():
        ctx = GridContext(spec.prompts, tuple(models), spec.base_dir, template=spec.template is not None)
        with contextlib.suppress(InvalidInput):  # the grid's own problems are reported next
            check_required(spec, models, read_layout(ctx).input_columns, source, log)
        validate_grid(ctx, log)
    elif spec.prompts is not None:
        reason = "is a directory" if spec.prompts.is_dir() else "does not exist"
        shown = display_path(spec.prompts)
        log.add(f"{source}: prompts: {shown} {reason} (a relative path starts at the spec's folder)")
    spec._grid_templates = TemplateChecker(spec, sources, source, log).check()
    log.raise_if_any()
    return spec


def load_spec_text(
    text: str,
    base_dir: Path,
    source_name: str,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    models: ModelCatalog | None = None,
) -> SweepSpec:
    """Parse and check a spec given as text, and every grid row; relative paths resolve against base_dir."""
    return check_spec(parse_spec_text(text, base_dir, source_name, overrides, environment), models)


def read_spec(
    path: Path, overrides: Mapping[str, Any] | None = None, environment: Mapping[str, Any] | None = None
) -> SweepSpec:
    """Read and parse a spec file, checking its shape only (`check_spec` does the rest)."""
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
    spec = parse_spec_text(text, path.absolute().parent, shown, overrides, environment)
    spec._source_path = path.absolute()
    return spec


def load_spec(
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    models: ModelCatalog | None = None,
) -> SweepSpec:
    """Read, parse and check a spec file and every row of its grid; InvalidInput lists all problems found.

    `models` is the catalog to check against; without it, the offline one (built-in table, user cache).
    """
    return check_spec(read_spec(path, overrides, environment), models)
