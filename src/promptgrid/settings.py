"""The one place promptgrid reads its environment: the API key, and settings a spec may also set.

Every setting a run takes is resolved by one rule, first match wins: the command-line flag, then the
environment variable below, then the spec, then the default (`promptgrid.defaults`). The API key comes from
the environment only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from promptgrid.defaults import API_BASE as DEFAULT_API_BASE
from promptgrid.errors import InvalidInput
from promptgrid.locations import is_loopback_url
from promptgrid.redact import add_secret

API_KEY_ENV = "EACHLABS_API_KEY"
API_BASE_ENV = "EACHLABS_API_BASE"
# Spec key -> the environment variable that sets it when no flag does.
ENVIRONMENT_SETTINGS: dict[str, str] = {
    "output": "PROMPTGRID_OUTPUT",
    "api.base_url": API_BASE_ENV,
    "api.rate_limit": "PROMPTGRID_RATE_LIMIT",
    "api.max_concurrent": "PROMPTGRID_MAX_CONCURRENT",
    "api.polls_count": "PROMPTGRID_POLLS_COUNT",
    "api.quota_url": "PROMPTGRID_QUOTA_URL",
    "max_jobs": "PROMPTGRID_MAX_JOBS",
}
_INTEGER_SETTINGS = frozenset({"api.max_concurrent", "max_jobs"})
_BOOLEAN_SETTINGS = frozenset({"api.polls_count"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ApiKey:
    """An API key that never shows itself: not in repr, str, logs, pickles or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not value or not value.strip():
            raise ValueError("the API key is empty")
        self._value = value.strip()
        add_secret(self._value)  # from now on scrubbed from everything stored or printed

    def reveal(self) -> str:
        """The key itself, for the one header that carries it."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('**********')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("an API key is not serialisable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiSettings:
    base_url: str
    api_key: ApiKey | None


def read_api_settings(base_url: str | None = None) -> ApiSettings:
    """Base URL: the argument, else EACHLABS_API_BASE, else the public API. Key: EACHLABS_API_KEY or None."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    base = base_url or os.environ.get(API_BASE_ENV, "").strip() or DEFAULT_API_BASE
    return ApiSettings(base_url=base.rstrip("/"), api_key=ApiKey(key) if key else None)


def require_api_key(settings: ApiSettings, sandbox_hint: str = "--sandbox") -> ApiKey:
    """The key, or InvalidInput (exit 2) saying how to get one for the API in force: a sandbox or other
    local API takes any key, so `sandbox_hint` (how this face asks for a sandbox) is offered for the real
    API only."""
    if settings.api_key is not None:
        return settings.api_key
    if is_loopback_url(settings.base_url):
        hint = f"the API at {settings.base_url} still needs one (a sandbox takes any non-empty key)"
    else:
        hint = f"export your Eachlabs API key, or pass {sandbox_hint}"
    raise InvalidInput([f"{API_KEY_ENV} is not set: {hint}"])


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings the environment sets, keyed as the spec names them; unset and empty variables left out.

    Numbers and booleans are converted here, so a bad value names its variable before anything runs.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    problems = []
    for key, name in ENVIRONMENT_SETTINGS.items():
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            found[key] = _convert(key, raw)
        except ValueError as exc:
            problems.append(f"environment variable {name}: {raw!r} {exc}")
    if problems:
        raise InvalidInput(problems)
    return found


def _convert(key: str, raw: str) -> Any:
    if key in _INTEGER_SETTINGS:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("is not a whole number") from None
    if key in _BOOLEAN_SETTINGS:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"is not a boolean; expected one of {', '.join(_TRUE + _FALSE)}")
    return raw
