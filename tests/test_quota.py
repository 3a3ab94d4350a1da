"""Choosing the budget: local without a quota URL, Redis with one, and refusing anything else up front."""

from __future__ import annotations

import pytest

from promptgrid.errors import InvalidInput
from promptgrid.quota.base import Limits
from promptgrid.quota.factory import open_budget, quota_namespace
from promptgrid.quota.local import LocalBudget
from promptgrid.quota.shared import RedisBudget
from promptgrid.settings import ApiKey


async def test_no_quota_url_means_a_local_budget():
    budget = open_budget(Limits())
    assert isinstance(budget, LocalBudget)
    await budget.aclose()


async def test_a_redis_url_means_a_shared_budget():
    # Opening connects lazily, so no server is needed to choose the budget.
    budget = open_budget(Limits(), "redis://127.0.0.1:1/0", namespace="abc")
    assert isinstance(budget, RedisBudget)
    await budget.aclose()


@pytest.mark.parametrize("url", ["http://user:s3cretpw@example.org/", "redis-cluster://x", "127.0.0.1:6379"])
def test_other_urls_are_refused_without_showing_a_password(url):
    with pytest.raises(InvalidInput) as caught:
        open_budget(Limits(), url)
    assert "api.quota_url" in str(caught.value)
    assert "s3cretpw" not in str(caught.value)


def test_the_namespace_names_the_key_without_revealing_it():
    key = "sk-live-0123456789abcdef"
    namespace = quota_namespace(ApiKey(key))
    assert namespace == quota_namespace(ApiKey(key))
    assert namespace != quota_namespace(ApiKey(key + "x"))
    assert key not in namespace and "0123456789abcdef" not in namespace
    assert quota_namespace(None) == "default"
