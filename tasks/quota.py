"""Choosing a run's request budget: this process alone, or shared with every worker through Redis."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from promptgrid.errors import InvalidInput
from promptgrid.settings import ApiKey
from tasks.budget import Budget, Limits, LocalBudget
from tasks.quota_redis import RedisBudget, redact_url

QUOTA_URL_SCHEMES = ("redis", "rediss", "unix")


def open_budget(limits: Limits, quota_url: str | None = None, namespace: str = "default") -> Budget:
    """A LocalBudget when `quota_url` is None, else a RedisBudget shared by all users of `namespace`.

    Processes share limits exactly when they share the Redis and the namespace, so give one API key one
    namespace (`quota_namespace(key)`); two keys have two quotas at the API and should here too.
    """
    if quota_url is None:
        return LocalBudget(limits)
    check_quota_url(quota_url)
    return RedisBudget(limits, quota_url, namespace)


def check_quota_url(quota_url: str) -> None:
    """Raise InvalidInput unless `quota_url` is a Redis URL (redis://, rediss:// or unix://)."""
    parts = urlsplit(quota_url)
    if parts.scheme not in QUOTA_URL_SCHEMES or not (parts.hostname or parts.path):
        raise InvalidInput(
            [f"api.quota_url: expected a redis://host:port/db URL, got {redact_url(quota_url)!r}"]
        )


def quota_namespace(api_key: ApiKey | None) -> str:
    """A name for the key's quota that does not reveal the key: 16 hex digits of its SHA-256."""
    if api_key is None:
        return "default"
    return hashlib.sha256(api_key.reveal().encode()).hexdigest()[:16]
