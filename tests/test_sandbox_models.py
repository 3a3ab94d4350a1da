"""The sandbox speaks both descriptions of the limits, shared slots, the balance's 402, best-effort cancel."""

from __future__ import annotations

import httpx
import pytest

from promptgrid.cli.sandbox import _describe
from promptgrid.sandbox.config import SandboxConfig
from promptgrid.sandbox.faults import Dice

ALICE = {"X-API-Key": "alice"}
BOB = {"X-API-Key": "bob"}


def create_body(seed: int) -> dict:
    inputs = {"prompt": "a kite", "seed": seed}
    return {"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": inputs}


def creates(client: httpx.Client, seeds: range, headers: dict = ALICE) -> list[httpx.Response]:
    return [client.post("/v1/prediction/", json=create_body(seed), headers=headers) for seed in seeds]


def test_the_docs_model_has_no_request_rate_limit(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, limit_model="docs", rate_limit=3)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        polls = [client.get("/v1/prediction/missing", headers=ALICE).status_code for _ in range(50)]
        made = creates(client, range(5))
    assert polls == [404] * 50 and [r.status_code for r in made] == [200] * 5
    assert sb.stats()["throttled"] == 0


def test_the_docs_models_cap_is_the_organisations_and_its_429_speaks_of_concurrent_executions(
    sandbox_factory, manual_clock
):
    sb = sandbox_factory(clock=manual_clock, limit_model="docs", max_in_flight=4, retry_after=False)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        first = creates(client, range(2), ALICE) + creates(client, range(2, 4), BOB)
        refused = creates(client, range(4, 5), BOB)[0]
        manual_clock.advance(sb.config.scaled(30.0))  # every prediction has ended; nobody polled
        again = creates(client, range(5, 6), ALICE)[0]
    assert [r.status_code for r in first] == [200] * 4
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    assert "concurrent executions" in refused.json()["details"] and "retry_after" not in refused.json()
    assert again.status_code == 200  # only executions finishing cleared it
    stats = sb.stats()
    assert stats["throttled_by"] == {"rate": 0, "concurrency": 1} and stats["max_in_flight"] == 4


def test_slots_held_by_other_keys_count_against_the_cap_and_can_change(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, limit_model="docs", held_by_others=3)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        codes = [r.status_code for r in creates(client, range(8))]
        sb.hold_slots(1)
        more = [r.status_code for r in creates(client, range(8, 11))]
    assert codes == [200] * 7 + [429]
    assert more == [200, 200, 429]
    assert sb.stats()["held_by_others"] == 1 and sb.stats()["max_in_flight"] == 10


def test_the_page_models_in_flight_cap_stays_per_key(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, max_in_flight=2, rate_limit=100)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        alice = [r.status_code for r in creates(client, range(3), ALICE)]
        bob = [r.status_code for r in creates(client, range(3, 5), BOB)]
        refused = creates(client, range(5, 6), BOB)[0]
    assert alice == [200, 200, 429] and bob == [200, 200]
    assert "in flight per API key" in refused.json()["details"] and "Retry-After" in refused.headers


def test_402_while_the_balance_covers_no_more_in_flight(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, limit_model="docs", payment_limit=2, latency_sigma=0.0)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        made = creates(client, range(3))
        manual_clock.advance(sb.config.scaled(9.0))  # both ended: the balance covers new ones again
        after = creates(client, range(3, 4))[0]
    assert [r.status_code for r in made] == [200, 200, 402]
    assert made[2].json()["error"] == "Insufficient balance"
    assert after.status_code == 200
    stats = sb.stats()
    assert stats["payment_required"] == 1 and stats["creates"] == 3 and stats["throttled"] == 0


def test_an_ignored_cancel_runs_on_holds_its_slot_and_may_still_succeed(sandbox_factory, manual_clock):
    sb = sandbox_factory(
        clock=manual_clock, max_in_flight=1, cancel_ignored_rate=1.0, latency_sigma=0.0, time_scale=1.0
    )
    with httpx.Client(base_url=sb.url, headers=ALICE, timeout=5) as client:
        prediction_id = creates(client, range(1))[0].json()["predictionID"]
        answer = client.post(f"/v1/prediction/{prediction_id}/cancel").json()
        blocked = creates(client, range(1, 2))[0]
        still = client.get(f"/v1/prediction/{prediction_id}").json()["status"]
        manual_clock.advance(8.5)
        finished = client.get(f"/v1/prediction/{prediction_id}").json()
        freed = creates(client, range(2, 3))[0]
    assert answer["status"] == "cancelled"  # the API says so, best effort
    assert blocked.status_code == 429 and still == "created"  # queued still, not cancelled
    assert finished["status"] == "success" and finished["metrics"]["cost"] > 0
    assert freed.status_code == 200
    assert sb.stats()["cancels_ignored"] == 1


def test_an_endless_prediction_whose_cancel_is_ignored_ends_cancelled_later(sandbox_factory, manual_clock):
    sb = sandbox_factory(
        clock=manual_clock,
        max_in_flight=1,
        never_finish_rate=1.0,
        cancel_ignored_rate=1.0,
        cancel_late_s=20.0,
        time_scale=1.0,
    )
    with httpx.Client(base_url=sb.url, headers=ALICE, timeout=5) as client:
        prediction_id = creates(client, range(1))[0].json()["predictionID"]
        client.post(f"/v1/prediction/{prediction_id}/cancel")
        manual_clock.advance(19.0)
        running = client.get(f"/v1/prediction/{prediction_id}").json()["status"]
        blocked = creates(client, range(1, 2))[0].status_code
        manual_clock.advance(1.5)
        ended = client.get(f"/v1/prediction/{prediction_id}").json()["status"]
        freed = creates(client, range(2, 3))[0].status_code
    assert (running, blocked, ended, freed) == ("processing", 429, "cancelled", 200)


def test_a_heavy_tail_stretches_a_share_of_latencies_by_at_most_its_factor():
    plain = Dice(SandboxConfig(latency_sigma=0.0))
    tailed = Dice(SandboxConfig(latency_sigma=0.0, latency_tail_rate=0.5, latency_tail_factor=4.0))
    base = {round(plain.fate().run_s + 0, 6) for _ in range(200)}
    stretched = [tailed.fate() for _ in range(2000)]
    totals = [f.queue_s + f.run_s for f in stretched]
    assert base == {7.2}
    assert all(8.0 - 1e-9 <= t <= 32.0 + 1e-9 for t in totals)
    assert 0.4 < sum(t > 8.0 + 1e-9 for t in totals) / len(totals) < 0.6


def test_the_stats_give_the_mean_latency_of_successes(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, latency_sigma=0.0, time_scale=1.0)
    with httpx.Client(base_url=sb.url, headers=ALICE, timeout=5) as client:
        creates(client, range(2))
        assert sb.stats()["mean_success_latency_s"] is None
        manual_clock.advance(9.0)
    assert sb.stats()["mean_success_latency_s"] == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "60 requests per 6 s per key (polls count), 10 predictions in flight per key"),
        (
            {"limit_model": "docs", "held_by_others": 3, "payment_limit": 5},
            "no request-rate limit, 10 concurrent executions per organisation (3 held by other keys), "
            "402 from 5 in flight",
        ),
    ],
)
def test_the_banner_names_the_limit_model(options, expected):
    banner = _describe(SandboxConfig(time_scale=10.0, **options), "http://127.0.0.1:1")
    assert expected in banner


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"limit_model": "both"}, "limit_model must be one of page, docs"),
        ({"held_by_others": 11}, "held_by_others must be between 0 and max_in_flight"),
        ({"payment_limit": 0}, "payment_limit must be at least 1"),
        ({"cancel_ignored_rate": 2.0}, "cancel_ignored_rate must be between 0 and 1"),
    ],
)
def test_impossible_settings_are_refused(options, problem):
    with pytest.raises(ValueError, match=problem):
        SandboxConfig(**options)
