"""Loading a spec: YAML parsed strictly, overrides applied, then the spec and every grid row checked.

Loading makes the spec's stages (`promptgrid.spec.schema`) one from the other, so that the models can be
resolved between them: `read_spec` (or `parse_spec_text`) checks the spec's own shape and gives the loaded
spec; `check_spec` checks it against its models' schemas (a catalog: what the API answered, or offline the
built-in table and the user cache) and every grid row, and gives the checked spec. Every problem found (spec
keys, input values for every model swept, grid rows, templates) is reported together in one InvalidInput,
before anything is sent: a key problem does not stop the later checks, which run on the keys left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from promptgrid.errors import InvalidInput
from promptgrid.models.catalog import ModelCatalog
from promptgrid.models.records import offline_catalog
from promptgrid.spec.key_problems import describe_key_problems, validate_keys
from promptgrid.spec.overrides import setting_origins
from promptgrid.spec.problems import ProblemLog, display_path
from promptgrid.spec.schema import OVERRIDE_KEYS, LoadedSpec, SpecKeys, SweepSpec, next_stage
from promptgrid.spec.sources import TooLarge, key_lines, model_entries, read_bounded_text, resolve_sources

# A spec is read whole before anything else: one larger than this is refused, not read.
MAX_SPEC_BYTES = 4 * 1024 * 1024


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
        if "." not in key:  # a top-level key: output, max_jobs
            data[key] = value
            continue
        api = data.get("api")
        api = dict(api) if isinstance(api, Mapping) else {}
        api[key.split(".", 1)[1]] = value
        data["api"] = api
    return data


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


def _spec_hash(keys: SpecKeys, prompts_as_written: Any) -> str:
    canonical = keys.model_dump(
        mode="json", exclude={"fail_when", "max_jobs", "split"}
    )  # not what a run makes
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
    *,
    lines: bool = True,
) -> LoadedSpec:
    """Parse a spec given as text and check its shape (not yet its models' inputs, nor the grid).

    `overrides` are the flags, `environment` the settings the environment sets
    (`promptgrid.settings.environment_overrides`): a flag wins over the environment, which wins over the spec.
    `lines=False` for a spec that was never written by a person (a dict): its problems then name no line.
    When the shape has problems, the rest of the spec is still checked offline, so that InvalidInput lists
    every problem at once.
    """
    raw = _parse_yaml(text, source_name)
    flags, environment = dict(overrides or {}), dict(environment or {})
    data = _fill_defaults(_apply_overrides(raw, {**environment, **flags}, source_name), base_dir, source_name)
    origins = setting_origins(raw, flags, environment)
    line_map = key_lines(text) if lines else None
    sources = resolve_sources(data, base_dir, source_name, line_map or {})  # wildcard files, samples
    keys, error = validate_keys(sources.data)
    log = ProblemLog()
    if error is not None:
        for problem in describe_key_problems(error, source_name, line_map or {}, origins):
            log.add(problem)
    if "prompts" not in data and "template" not in data:
        log.add(f"{source_name}: prompts: is required (a CSV or Parquet grid), unless a template: is")
    loaded = None
    if keys is not None:
        loaded = next_stage(
            LoadedSpec,
            keys,
            source_path=Path(source_name),
            source_name=source_name,
            base_dir=base_dir,
            source_text=text,
            spec_hash=_spec_hash(keys, raw.get("prompts")),
            setting_origins=origins,
            lines=line_map,
            sources=sources,
            named_models=tuple(model_entries(sources.data)),
        )
    if log.total:
        if loaded is not None:  # the rest of the spec's problems, as far as they can be found offline
            _check(loaded, offline_catalog(loaded.api.base_url), log, models_known=False)
        else:
            for problem in sources.problems:
                log.add(problem)
        log.raise_if_any()
    assert loaded is not None  # keys validate whenever nothing was logged
    return loaded


def check_spec(spec: LoadedSpec, catalog: ModelCatalog | None = None) -> SweepSpec:
    """Check a loaded spec against its models' schemas, its templates, and every grid row: the checked spec,
    tied to `catalog` (offline, by default: the built-in table and the user cache of `api.base_url`)."""
    log = ProblemLog()
    checked = _check(spec, catalog or offline_catalog(spec.api.base_url), log)
    log.raise_if_any()
    assert checked is not None  # the models are found whenever nothing was logged
    return checked


def _check(
    spec: LoadedSpec, catalog: ModelCatalog, log: ProblemLog, *, models_known: bool = True
) -> SweepSpec | None:
    """Log every problem of `spec` against `catalog`; the checked spec, or None when a model is not found
    (its values cannot be checked without its schema). `models_known=False` says nothing of a model the
    catalog lacks: an offline catalog may not know what the API does."""
    # The grid's checks bring pyarrow: a spec read and not checked (a rerun with nothing left) does without.
    from promptgrid.spec.checks import validate_grid
    from promptgrid.spec.grid import GridContext, read_layout
    from promptgrid.spec.model_checks import check_required, check_study, find_models
    from promptgrid.spec.template_checks import TemplateChecker

    source = spec.source_name
    found = ProblemLog()
    models = find_models(spec.named_models or (("model", spec.model),), catalog, spec.where, found)
    if found.total and models_known:
        for problem in found.problems:
            log.add(problem)
        return None
    for problem in spec.sources.problems:
        log.add(problem)
    if found.total:
        return None
    checked = next_stage(SweepSpec, spec, catalog=catalog)
    check_study(checked, models, log)
    if checked.prompts is not None and checked.prompts.is_file():
        ctx = GridContext(
            checked.prompts, tuple(models), checked.base_dir, template=checked.template is not None
        )
        with contextlib.suppress(InvalidInput):  # the grid's own problems are reported next
            check_required(checked, models, read_layout(ctx).input_columns, source, log)
        validate_grid(ctx, log)
    elif checked.prompts is not None:
        reason = "is a directory" if checked.prompts.is_dir() else "does not exist"
        shown = display_path(checked.prompts)
        log.add(f"{checked.where('prompts')}: {shown} {reason} (a relative path starts at the spec's folder)")
    grid_templates = TemplateChecker(checked, log).check()
    return next_stage(SweepSpec, checked, grid_templates=grid_templates)


def load_spec_text(
    text: str,
    base_dir: Path,
    source_name: str,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    models: ModelCatalog | None = None,
    *,
    lines: bool = True,
) -> SweepSpec:
    """Parse and check a spec given as text, and every grid row; relative paths resolve against base_dir."""
    loaded = parse_spec_text(text, base_dir, source_name, overrides, environment, lines=lines)
    return check_spec(loaded, models)


def load_spec_data(
    data: Mapping[str, Any],
    base_dir: Path,
    source_name: str,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    models: ModelCatalog | None = None,
) -> SweepSpec:
    """Check a spec given as data (a dict of its keys, as Python builds it): its problems name keys, never
    lines; its text (saved beside the manifest) is the data written as YAML."""
    try:
        text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:
        raise InvalidInput([f"{source_name}: cannot be written as YAML ({exc})"]) from None
    return load_spec_text(text, base_dir, source_name, overrides, environment, models, lines=False)


def reparse_spec(
    spec: LoadedSpec,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> LoadedSpec:
    """The same spec parsed again with other overrides: same text, folder, name, path and line-ness."""
    loaded = parse_spec_text(
        spec.source_text,
        spec.base_dir,
        spec.source_name,
        overrides,
        environment,
        lines=spec.lines is not None,
    )
    return next_stage(LoadedSpec, loaded, source_path=spec.source_path)


def reload_spec(
    spec: LoadedSpec,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    models: ModelCatalog | None = None,
) -> SweepSpec:
    """The same spec loaded again with other overrides, and checked."""
    return check_spec(reparse_spec(spec, overrides, environment), models)


def read_spec(
    path: Path, overrides: Mapping[str, Any] | None = None, environment: Mapping[str, Any] | None = None
) -> LoadedSpec:
    """Read and parse a spec file, checking its shape only (`check_spec` does the rest)."""
    path = Path(path)
    shown = display_path(path.absolute())
    try:
        text = read_bounded_text(path, MAX_SPEC_BYTES)
    except TooLarge as exc:
        raise InvalidInput([f"{shown}: {exc}"]) from None
    except FileNotFoundError:
        raise InvalidInput([f"{shown}: the spec file does not exist"]) from None
    except IsADirectoryError:
        raise InvalidInput([f"{shown}: is a directory, not a spec file"]) from None
    except UnicodeDecodeError as exc:
        raise InvalidInput([f"{shown}: byte {exc.start + 1} is not UTF-8; save the spec as UTF-8"]) from None
    except OSError as exc:
        raise InvalidInput([f"{shown}: cannot read the spec file ({exc.strerror})"]) from None
    spec = parse_spec_text(text, path.absolute().parent, shown, overrides, environment)
    return next_stage(LoadedSpec, spec, source_path=path.absolute())


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
