"""Each injected fault does what it says: 5xx, dropped connections, failed, endless, expiring predictions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import httpx
import pytest

from promptgrid.sandbox.config import DEFAULT_ERROR_CODES

KEY = {"X-API-Key": "test-key"}


def create_body(seed: int) -> dict:
    return {
        "model": "stable-diffusion-3-5-large",
        "version": "0.0.1",
        "input": {"prompt": "a boat", "seed": seed},
    }


def created_then_got(client: httpx.Client, count: int, meanwhile: Callable[[], object]) -> tuple[list, list]:
    """`count` predictions created, then (after `meanwhile`) each one's get: their ids and answers."""
    ids = [
        client.post("/v1/prediction/", json=create_body(seed)).json()["predictionID"] for seed in range(count)
    ]
    meanwhile()
    return ids, [client.get(f"/v1/prediction/{pid}").json() for pid in ids]


def test_create_5xx_creates_nothing_but_counts_in_the_window(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, create_5xx_rate=1.0, rate_limit=3)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        answers = [client.post("/v1/prediction/", json=create_body(seed)) for seed in range(4)]
    assert all(a.status_code in (500, 502, 503) for a in answers[:3])
    assert answers[0].json() == {"error": "Failed to create prediction"}
    assert answers[3].status_code == 429
    stats = sb.stats()
    assert stats["creates"] == 0 and stats["faults"]["create_server_error"] == 3


@pytest.mark.parametrize(("after_share", "created"), [(1.0, 1), (0.0, 0)])
def test_dropped_create_may_or_may_not_have_created(sandbox_factory, manual_clock, after_share, created):
    sb = sandbox_factory(
        clock=manual_clock, drop_rate=1.0, drop_after_create_share=after_share, max_in_flight=1
    )
    with (
        httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.post("/v1/prediction/", json=create_body(1))
    stats = sb.stats()
    assert stats["creates"] == created
    assert stats["predictions_by_status"]["created"] == created  # it holds an in-flight slot, unseen
    assert stats["responses"] == {"dropped": 1}


def test_dropped_creates_mix_both_cases_reproducibly(sandbox_factory, manual_clock):
    outcomes = []
    for _ in range(2):
        sb = sandbox_factory(clock=manual_clock, drop_rate=1.0, max_in_flight=100, rate_limit=100, seed=3)
        with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
            for seed in range(30):
                with pytest.raises(httpx.TransportError):
                    client.post("/v1/prediction/", json=create_body(seed))
        faults = sb.stats()["faults"]
        outcomes.append((faults["create_drop_after"], faults["create_drop_before"]))
    assert outcomes[0] == outcomes[1]
    after, before = outcomes[0]
    assert after + before == 30 and after > 0 and before > 0


def test_get_faults_5xx_and_drop(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, get_5xx_rate=1.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        got = client.get(f"/v1/prediction/{prediction_id}")
    assert got.status_code in (500, 502, 503) and got.json() == {"error": "Internal server error"}

    dropping = sandbox_factory(clock=manual_clock, drop_rate=1.0, drop_after_create_share=1.0)
    with httpx.Client(base_url=dropping.url, headers=KEY, timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            client.post("/v1/prediction/", json=create_body(1))
        (prediction_id,) = dropping.service.predictions  # the id the client never saw
        with pytest.raises(httpx.TransportError):
            client.get(f"/v1/prediction/{prediction_id}")
    assert dropping.stats()["faults"]["get_drop"] == 1


def test_failed_predictions_carry_error_codes(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, error_rate=1.0, max_in_flight=20)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        _, results = created_then_got(client, 20, lambda: manual_clock.advance(sb.config.scaled(1000)))
    retryable = dict(DEFAULT_ERROR_CODES)
    assert {r["status"] for r in results} == {"error"}
    codes = {r["output"]["error_code"] for r in results}
    assert codes == set(retryable)  # 20 draws meet every code
    for result in results:
        assert result["output"]["retryable"] is retryable[result["output"]["error_code"]]
        assert result["output"]["error_message"]
        assert result["metrics"]["cost"] == 0.0
    assert sb.stats()["predictions_by_status"]["error"] == 20


def test_a_prediction_that_never_finishes_holds_its_slot_until_cancelled(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, never_finish_rate=1.0, max_in_flight=1)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        manual_clock.advance(sb.config.scaled(10 * 3600))
        assert client.get(f"/v1/prediction/{prediction_id}").json()["status"] == "processing"
        assert client.post("/v1/prediction/", json=create_body(2)).status_code == 429
        client.post(f"/v1/prediction/{prediction_id}/cancel")
        assert client.post("/v1/prediction/", json=create_body(3)).status_code == 200


def test_stats_give_each_draw_and_how_it_ended_in_creation_order(sandbox_factory, manual_clock):
    # For a benchmark's floor: what a client with no lag would have met, draw by draw.
    sb = sandbox_factory(
        clock=manual_clock, error_rate=0.5, never_finish_rate=0.3, cancel_ignored_rate=0.5, max_in_flight=30
    )
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        ids, answers = created_then_got(client, 30, lambda: manual_clock.advance(sb.config.scaled(1000)))
        endless = [pid for pid, answer in zip(ids, answers, strict=True) if answer["status"] == "processing"]
        for pid in endless:
            client.post(f"/v1/prediction/{pid}/cancel")
    stats = sb.stats()
    assert len(stats["latencies_s"]) == len(stats["drawn_ends"]) == 30
    assert stats["cancel_late_s"] == sb.config.scaled(sb.config.cancel_late_s)
    for answer, end in zip(answers, stats["drawn_ends"], strict=True):
        if answer["status"] == "success":
            assert end == "success"
        elif answer["status"] == "error":
            assert end == ("retry" if answer["output"]["retryable"] else "final")
        else:
            assert end in ("never", "held")
    held = stats["drawn_ends"].count("held")
    assert held == stats["cancels_ignored"] and 0 < held < len(endless)  # the draws meet both
    assert {"success", "retry", "final"} <= set(stats["drawn_ends"])


def test_output_urls_expire(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, url_lifetime_s=120.0, latency_sigma=0.0, latency_median_s=8.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        manual_clock.advance(sb.config.scaled(8.0 + 119.0))
        output = client.get(f"/v1/prediction/{prediction_id}").json()["output"]
        fresh = client.get(output)
        manual_clock.advance(sb.config.scaled(1.5))
        stale = client.get(output)
        still_success = client.get(f"/v1/prediction/{prediction_id}").json()["status"]
    assert fresh.status_code == 200 and fresh.content
    assert stale.status_code == 410 and stale.json() == {"error": "Output expired"}
    assert still_success == "success"


def test_an_unfinished_prediction_has_no_output(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        early = client.get(f"{sb.url}/outputs/{prediction_id}.webp")
        result = client.get(f"/v1/prediction/{prediction_id}").json()
    assert early.status_code == 404 and result["output"] is None


def test_stats_count_dropped_and_answered_requests_side_by_side(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, drop_rate=0.5, max_in_flight=100, rate_limit=100, seed=1)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        for seed in range(20):
            with contextlib.suppress(httpx.TransportError):
                client.post("/v1/prediction/", json=create_body(seed))
    responses = sb.stats()["responses"]
    assert responses["dropped"] > 0 and responses["200"] > 0
    assert responses["dropped"] + responses["200"] == 20


def test_a_create_made_then_answered_500_made_and_billed_its_prediction(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, create_made_5xx_rate=1.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        answer = client.post("/v1/prediction/", json=create_body(1))
        assert answer.status_code == 500 and answer.json() == {"error": "Failed to create prediction"}
        listed = client.get("/v1/executions").json()["executions"]
    stats = sb.stats()
    assert stats["creates"] == 1 and stats["faults"] == {"create_made_then_5xx": 1} and len(listed) == 1


def test_a_held_answer_is_silence_then_a_dropped_connection_after_the_create_was_made(sandbox_factory):
    sb = sandbox_factory(create_held_rate=1.0, held_answer_s=20.0)  # 0.2 s at the tests' time scale
    with (
        httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.post("/v1/prediction/", json=create_body(1))
    stats = sb.stats()
    assert stats["creates"] == 1 and stats["faults"] == {"create_held": 1}
    assert stats["responses"] == {"dropped": 1}
    with pytest.raises(httpx.ReadTimeout):  # a client that gives up first sees only silence
        httpx.post(f"{sb.url}/v1/prediction/", json=create_body(2), headers=KEY, timeout=0.05)


def test_a_lagging_listing_shows_each_prediction_as_it_stood_that_long_before(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, latency_sigma=0.0, executions_lag_s=60.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        manual_clock.advance(sb.config.scaled(sb.config.latency_median_s + 1))
        assert client.get(f"/v1/prediction/{prediction_id}").json()["status"] == "success"
        (row,) = client.get("/v1/executions").json()["executions"]
        assert row["id"] == prediction_id and row["status"] == "created" and row["output"] is None
        manual_clock.advance(sb.config.scaled(60))
        (row,) = client.get("/v1/executions").json()["executions"]
        assert row["status"] == "success" and row["output"]
