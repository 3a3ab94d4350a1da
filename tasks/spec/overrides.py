"""Command-line flags and flow parameters that override a spec, in the spec's own key names."""

from __future__ import annotations

from typing import Any


def spec_overrides(
    output: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
) -> dict[str, Any]:
    """The overrides keyed as the spec names them (`output`, `api.base_url`, ...); unset ones left out."""
    flags = {
        "output": output,
        "api.base_url": api_base,
        "api.rate_limit": rate_limit,
        "api.max_concurrent": max_concurrent,
        "api.polls_count": polls_count,
    }
    return {key: value for key, value in flags.items() if value is not None}
