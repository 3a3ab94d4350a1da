"""A spec as a face is given it (a YAML file's path, a dict of its keys, or a spec loaded before), parsed
with the settings in force: the spec's shape checked, not yet its models nor its grid."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from promptgrid.errors import InvalidInput
from promptgrid.spec.load import parse_spec_text, read_spec, reparse_spec
from promptgrid.spec.schema import LoadedSpec

# What every function taking a spec accepts: a YAML file, the spec's keys as a dict, or a loaded spec.
SpecSource: TypeAlias = str | os.PathLike[str] | Mapping[str, Any] | LoadedSpec

# The name a spec given as a dict goes by in messages, as a file's path would.
DICT_SPEC_NAME = "spec"


def parse_source(
    source: SpecSource,
    overrides: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> LoadedSpec:
    """The spec parsed with `overrides` (flags or arguments) over `environment` over its own keys.

    Relative paths in a dict start from `base_dir` (the working directory by default), in a file from its
    folder; a spec loaded before is parsed again from its text, so the settings in force apply to it.
    """
    if isinstance(source, LoadedSpec):
        return reparse_spec(source, overrides, environment)
    if isinstance(source, Mapping):
        try:
            text = yaml.safe_dump(_plain(source), sort_keys=False, allow_unicode=True)
        except yaml.YAMLError as exc:
            raise InvalidInput([f"{DICT_SPEC_NAME}: cannot be written as YAML ({exc})"]) from None
        folder = Path(base_dir if base_dir is not None else Path.cwd()).absolute()
        # a dict has no lines: its problems name keys only
        return parse_spec_text(text, folder, DICT_SPEC_NAME, overrides, environment, lines=False)
    if isinstance(source, str | os.PathLike):
        return read_spec(Path(source), overrides, environment)
    raise InvalidInput([f"a spec is a YAML file's path or a dict of its keys, not {type(source).__name__}"])


def _plain(value: Any) -> Any:
    """The dict as YAML can write it: paths as text, tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value
