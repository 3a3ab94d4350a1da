"""Choosing a run's request budget: this process alone, or shared with every worker through Redis."""

from __future__ import annotations

import hashlib

from promptgrid.errors import InvalidInput, QuotaUnavailable
from promptgrid.locations import check_quota_url as check_url
from promptgrid.locations import redact_url
from promptgrid.quota.base import Budget, Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.spec.schema import ApiConfig

START_HINT = (
    "start it (on this machine: `redis-server --port 6379 --save ''`), or remove api.quota_url from the "
    "spec to run on this process's own quota"
)


def open_budget(limits: Limits, quota_url: str | None = None, namespace: str = "default") -> Budget:
    """A LocalBudget when `quota_url` is None, else a RedisBudget shared by all users of `namespace`.

    Processes share limits exactly when they share the Redis and the namespace, so give one API key one
    namespace (`quota_namespace(key)`); two keys have two quotas at the API and should here too.
    """
    if quota_url is None:
        return LocalBudget(limits)
    check_quota_url(quota_url)
    from promptgrid.quota.shared import RedisBudget  # redis is imported only where a quota is shared

    return RedisBudget(limits, quota_url, namespace)


def spec_limits(api: ApiConfig) -> Limits:
    """The quota a spec's `api` section states (`rate_limit: auto`: no cap until the API shows one).

    Limits come from the spec as given: a sandbox run's are already scaled to its clock."""
    return Limits(
        requests=api.rate_limit.requests,
        window_s=api.rate_limit.window_s,
        max_in_flight=api.max_concurrent,
        polls_count=api.polls_count,
    )


def open_key_budget(api: ApiConfig, api_key: ApiKey | None) -> Budget:
    """The budget of one key's quota as a spec states it: the run's requests and its model lookups go
    through it, shared through Redis with every other process of the key when `api.quota_url` is set."""
    return open_budget(spec_limits(api), api.quota_url, quota_namespace(api_key))


def check_quota_url(quota_url: str) -> None:
    """Raise InvalidInput unless `quota_url` is a Redis URL (redis://, rediss:// or unix://)."""
    try:
        check_url(quota_url)
    except ValueError as exc:
        raise InvalidInput([f"api.quota_url: {exc}"]) from None


def quota_namespace(api_key: ApiKey | None) -> str:
    """A name for the key's quota that does not reveal the key: 16 hex digits of its SHA-256."""
    if api_key is None:
        return "default"
    return hashlib.sha256(api_key.reveal().encode()).hexdigest()[:16]


def check_quota_reachable(quota_url: str | None, timeout_s: float | None = None) -> None:
    """Before anything is sent: QuotaUnavailable, naming the URL without its password, unless the shared
    quota's Redis answers within `timeout_s` (the budget's own connect timeout by default). Nothing to check
    without a `quota_url`."""
    if quota_url is None:
        return
    check_quota_url(quota_url)
    import redis
    from redis.exceptions import RedisError

    from promptgrid.quota.shared import CONNECT_TIMEOUT_S

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    client = redis.Redis.from_url(quota_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        raise QuotaUnavailable(
            f"the shared quota at {redact_url(quota_url)} is unreachable ({exc}); nothing was sent. "
            + START_HINT
        ) from None
    finally:
        client.close()
