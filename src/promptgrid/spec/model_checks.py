"""Checking a spec against its models' schemas: every model known, every key under `inputs:`, `sweep:` and
`zip:` an input of some model of the study, every value allowed by each model that has that input, and each
model's required inputs supplied. Every problem is collected, so all are reported at once.

An input applies to the models that have it: in a study of SD3.5 Large against a model with other input
names, `cfg` sets SD3.5's jobs and `guidance` the other model's. Under `inputs:` a name no model of the
study has is an error, with the closest input name suggested (a typo must not silently fall back to a
default); under `sweep:` and `zip:` it is a template variable, which the template checks judge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from promptgrid.errors import UnknownModel
from promptgrid.models.catalog import ModelCatalog
from promptgrid.models.schema import ModelSchema
from promptgrid.spec.checks import check_value
from promptgrid.spec.problems import ProblemLog
from promptgrid.spec.schema import SweepSpec
from promptgrid.spec.template import variable_values


def find_models(
    entries: Sequence[tuple[str, str]], catalog: ModelCatalog, where: Callable[[str], str], log: ProblemLog
) -> list[ModelSchema]:
    """The schema of each model the spec names; `where` names a key (and its line) in messages."""
    models: dict[str, ModelSchema] = {}
    for key, slug in entries:
        try:
            model = catalog.get(slug)
        except UnknownModel as exc:
            log.add(f"{where(key)}: {exc.message}")
            continue
        models[model.slug] = model
        if "prompt" not in model.properties:
            log.add(
                f"{where(key)}: model {model.slug} has no prompt input; promptgrid sends each grid "
                "row's prompt, so it runs text-to-image models"
            )
    return list(models.values())


def _entries(spec: SweepSpec) -> list[tuple[str, str, Any]]:
    entries = [(f"inputs.{key}", key, value) for key, value in spec.inputs.items()]
    variables = set(spec.variables)  # text for the templates, checked by them
    for section in ("sweep", "zip"):
        for key, values in getattr(spec, section).items():
            if key != "model" and key not in variables:
                entries.extend((f"{section}.{key}[{i}]", key, value) for i, value in enumerate(values))
    return entries


def unknown_input_hint(key: str, models: Sequence[ModelSchema]) -> str:
    """The input a misspelt name most likely meant, and each model's inputs."""
    return "; ".join(model.unknown_input(key) for model in models)


def check_keys(spec: SweepSpec, models: Sequence[ModelSchema], log: ProblemLog) -> set[str]:
    """Every key under `inputs:` no model has, each reported with a suggestion; returns those keys."""
    unknown: set[str] = set()
    for key in spec.inputs:
        if not any(key in model.properties for model in models):
            unknown.add(key)
            hint = unknown_input_hint(key, models)
            problem = f"{key!r} cannot be a default input: no model of this spec has it; {hint}"
            log.add(f"{spec.where(f'inputs.{key}')}: {problem}")
    return unknown


def check_study(spec: SweepSpec, models: Sequence[ModelSchema], log: ProblemLog) -> None:
    """The spec's keys and values against its models, its variables' values, and the jobs per row."""
    check_values(spec, models, log)
    for section in ("sweep", "zip"):
        for key, values in getattr(spec, section).items():
            if key in spec.variables:
                try:
                    variable_values(key, values)
                except ValueError as exc:
                    path, _, problem = f"{section}.{exc}".partition(": ")  # "sweep.color[2]: ..."
                    log.add(f"{spec.where(path)}: {problem}")
    try:  # sweeps of inputs only the resolved models have were counted as template variables at first
        spec.count_variants()
    except ValueError as exc:
        log.add(f"{spec.source_name}: {exc}")


def check_values(spec: SweepSpec, models: Sequence[ModelSchema], log: ProblemLog) -> None:
    """Check every default, sweep and zip value against every model of the study that has the input."""
    unknown = check_keys(spec, models, log)
    for where, key, value in _entries(spec):
        if key in unknown:
            continue
        _, allowed = check_value(models, key, value, spec.base_dir)
        if allowed is None and value in (None, ""):
            allowed = "a value (leave the key out to use the default)"
        if allowed is not None and key == "aspect_ratio" and isinstance(value, int):
            allowed += ' (quote it, as "1:1": YAML reads an unquoted 1:1 as the number 61)'
        if allowed is not None:
            log.add(f"{spec.where(where)}: {value!r} is not allowed; expected {allowed}")


def check_required(
    spec: SweepSpec, models: Sequence[ModelSchema], columns: Iterable[str], source: str, log: ProblemLog
) -> None:
    """Each model's required inputs must come from somewhere: a default, the spec, an axis, a grid column."""
    given = {"prompt", *spec.inputs, *spec.sweep, *spec.zip, *columns}
    for model in models:
        for name in model.required:
            if name not in given and name not in model.defaults and not (name == "seed" and spec.seeds):
                log.add(
                    f"{source}: model {model.slug} requires the input {name!r}; set it under inputs:, as an "
                    "axis, or as a grid column"
                )
