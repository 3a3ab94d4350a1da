"""Command-line flags and flow parameters that override a spec, in the spec's own key names, and where each
of a run's settings came from.

One precedence for every setting, first match wins: flag, environment (`promptgrid.settings`), spec, default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from promptgrid.locations import redact_url
from promptgrid.settings import API_KEY_ENV, ENVIRONMENT_SETTINGS

if TYPE_CHECKING:
    from promptgrid.spec.schema import LoadedSpec

PRECEDENCE = "flag > environment > spec > default"
# Spec key -> the flag that sets it.
FLAGS: dict[str, str] = {
    "output": "--output",
    "api.base_url": "--api-base",
    "api.rate_limit": "--rate-limit",
    "api.max_concurrent": "--max-concurrent",
    "api.polls_count": "--polls-count",
    "max_jobs": "--max-jobs",
    "api.max_cost": "--max-cost",
    "api.stall_timeout": "--stall-timeout",
}


def spec_overrides(
    output: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    *,
    max_jobs: int | None = None,
    max_cost: float | None = None,
    stall_timeout: float | None = None,
) -> dict[str, Any]:
    """The overrides keyed as the spec names them (`output`, `api.base_url`, ...); unset ones left out."""
    flags = {
        "output": output,
        "api.base_url": api_base,
        "api.rate_limit": rate_limit,
        "api.max_concurrent": max_concurrent,
        "api.polls_count": polls_count,
        "max_jobs": max_jobs,
        "api.max_cost": max_cost,
        "api.stall_timeout": stall_timeout,
    }
    return {key: value for key, value in flags.items() if value is not None}


def setting_origins(
    written: Mapping[str, Any], flags: Mapping[str, Any], environment: Mapping[str, Any]
) -> dict[str, str]:
    """Where each overridable setting came from: its flag, its environment variable, `spec` or `default`."""
    origins = {}
    for key in ENVIRONMENT_SETTINGS:
        if key in flags:
            origins[key] = FLAGS.get(key, "flag")
        elif key in environment:
            origins[key] = ENVIRONMENT_SETTINGS[key]
        elif _is_written(written, key):
            origins[key] = "spec"
        else:
            origins[key] = "default"
    return origins


def _is_written(data: Mapping[str, Any], key: str) -> bool:
    head, _, rest = key.partition(".")
    if not rest:
        return head in data
    section = data.get(head)
    return isinstance(section, Mapping) and rest in section


def describe_settings(
    spec: LoadedSpec, replaced: Mapping[str, tuple[Any, str]] | None = None, *, key_set: bool = True
) -> str:
    """The run's settings, each with where it came from; `replaced` holds values set after loading
    (e.g. --sandbox's base URL), as (value, origin)."""
    values: dict[str, Any] = {
        "output": spec.output,
        "api.base_url": spec.api.base_url,
        "api.rate_limit": str(spec.api.rate_limit),
        "api.max_concurrent": spec.api.max_concurrent,
        "api.polls_count": spec.api.polls_count,
        "api.quota_url": redact_url(spec.api.quota_url) if spec.api.quota_url else "-",
        "max_jobs": f"{spec.max_jobs:,}",
    }
    origins = dict(spec.setting_origins)
    for key, (value, origin) in (replaced or {}).items():
        values[key], origins[key] = value, origin
    width = max(len(key) for key in values)
    lines = [f"settings ({PRECEDENCE}):"]
    lines += [f"  {key:<{width}}  {_shown(values[key])}  ({origins.get(key, 'default')})" for key in values]
    key_state = "set, never shown" if key_set else "not set"
    lines.append(f"  {'api key':<{width}}  {API_KEY_ENV} ({key_state})")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
