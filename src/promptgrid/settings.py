"""The one place promptgrid reads its environment: the API key and base URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

DEFAULT_API_BASE = "https://api.eachlabs.ai"
API_KEY_ENV = "EACHLABS_API_KEY"
API_BASE_ENV = "EACHLABS_API_BASE"


class ApiKey:
    """An API key that never shows itself: not in repr, str, logs, pickles or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not value or not value.strip():
            raise ValueError("the API key is empty")
        self._value = value.strip()

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
