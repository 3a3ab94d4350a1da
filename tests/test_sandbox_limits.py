"""The sandbox enforces the quota strictly: N requests in any trailing window, M predictions in flight."""

from __future__ import annotations

import httpx
import pytest

from promptgrid.sandbox.limits import InFlight, RequestWindow

KEY = {"X-API-Key": "test-key"}
CREATE = {"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": {"prompt": "a kite", "seed": 1}}


def create_body(seed: int) -> dict:
    return {**CREATE, "input": {**CREATE["input"], "seed": seed}}


def statuses(client: httpx.Client, count: int, path: str = "/v1/prediction/missing") -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def test_burst_of_n_plus_one_in_one_window_meets_exactly_one_429(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, rate_limit=60, window_s=60.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        seen = statuses(client, 61)
        refused = client.get("/v1/prediction/missing")
    assert seen[:60] == [404] * 60
    assert seen[60] == 429
    assert refused.status_code == 429
    assert float(refused.headers["Retry-After"]) == pytest.approx(60 / sb.config.time_scale, abs=0.01)
    assert refused.json()["status"] == 429 and refused.json()["error"] == "too many requests"
    stats = sb.stats()
    assert stats["throttled"] == 2 and stats["max_window_requests"] == 60


def test_real_clock_burst_at_time_scale_10_meets_exactly_one_429(sandbox_factory):
    # The default quota at x10 is 60 requests per 6 s; a loopback burst takes well under that.
    sb = sandbox_factory(time_scale=10.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        seen = statuses(client, 61)
    assert seen.count(429) == 1 and seen[-1] == 429


def test_creates_polls_and_cancels_share_one_window(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, rate_limit=5, window_s=60.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        client.get(f"/v1/prediction/{prediction_id}")
        client.post(f"/v1/prediction/{prediction_id}/cancel")
        client.post("/v1/prediction/", json={"model": "nope"})  # a 400 still counts: the server did the work
        assert client.get(f"/v1/prediction/{prediction_id}").status_code == 200
        assert client.post("/v1/prediction/", json=create_body(2)).status_code == 429
    assert sb.stats()["creates"] == 1


def test_refused_requests_do_not_count_and_the_window_slides(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, time_scale=1.0, rate_limit=10, window_s=60.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        assert statuses(client, 5) == [404] * 5  # t = 0
        manual_clock.advance(30)
        assert statuses(client, 5) == [404] * 5  # t = 30
        assert statuses(client, 20) == [429] * 20  # hammering while refused costs nothing
        retry_after = float(client.get("/v1/prediction/missing").headers["Retry-After"])
        assert retry_after == pytest.approx(30, abs=0.01)
        manual_clock.advance(retry_after - 0.01)
        assert statuses(client, 1) == [429]  # the t = 0 requests are still inside the window
        manual_clock.advance(0.02)
        # Only the five from t = 0 have left: a sliding window, not a fresh bucket.
        assert statuses(client, 6) == [404] * 5 + [429]


def test_request_exactly_one_window_later_still_shares_it():
    window = RequestWindow(limit=1, window=60.0)
    window.record(0.0)
    assert window.retry_after(60.0) > 0  # [0, 60] is one closed window holding both requests
    assert window.retry_after(60.0011) == 0


def test_in_flight_limit_refuses_the_eleventh_create_until_one_ends(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, time_scale=1.0, latency_sigma=0.0, latency_median_s=8.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        codes = [client.post("/v1/prediction/", json=create_body(seed)).status_code for seed in range(10)]
        refused = client.post("/v1/prediction/", json=create_body(10))
        assert codes == [200] * 10
        assert refused.status_code == 429
        # Nothing ends before 8 s: the refusal says how long until a slot frees.
        assert float(refused.headers["Retry-After"]) == pytest.approx(8.0, abs=0.01)
        manual_clock.advance(7.9)
        assert client.post("/v1/prediction/", json=create_body(11)).status_code == 429
        manual_clock.advance(0.2)  # all ten finished, whether anyone polled them or not
        assert client.post("/v1/prediction/", json=create_body(12)).status_code == 200
    stats = sb.stats()
    assert stats["max_in_flight"] == 10 and stats["creates"] == 11 and stats["throttled"] == 2
    # Refused creates were not counted in the window: 11 creates admitted.
    assert stats["max_window_requests"] == 11


def test_polls_need_not_count(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, rate_limit=3, polls_count=False)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        assert statuses(client, 10) == [404] * 10
        codes = [client.post("/v1/prediction/", json=create_body(seed)).status_code for seed in range(4)]
    assert codes == [200, 200, 200, 429]


def test_each_key_has_its_own_window(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, rate_limit=2)
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        alice = [client.get("/v1/prediction/x", headers={"X-API-Key": "alice"}).status_code for _ in range(3)]
        bob = [client.get("/v1/prediction/x", headers={"X-API-Key": "bob"}).status_code for _ in range(2)]
    assert alice == [404, 404, 429] and bob == [404, 404]


def test_outputs_and_stats_are_not_counted(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, rate_limit=3, latency_sigma=0.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=create_body(1)).json()["predictionID"]
        manual_clock.advance(sb.config.scaled(10.0))  # past the 8 s latency, inside the 60 s window
        output = client.get(f"/v1/prediction/{prediction_id}").json()["output"]
        fetched = [client.get(output).status_code for _ in range(5)]
        for _ in range(5):
            client.get("/sandbox/stats")
        assert fetched == [200] * 5
        assert statuses(client, 2) == [404, 429]  # the third request of the window, then the limit


def test_in_flight_counts_by_end_time_and_rechecks_late_predictions():
    done_at = {"a": 5.0, "b": 10.0, "late": 5.0}
    still_waiting = {"late"}  # e.g. its input image is still downloading at its end time

    def is_done(prediction_id: str, now: float) -> bool:
        return now >= done_at[prediction_id] and prediction_id not in still_waiting

    flights = InFlight(limit=3, is_done=is_done)
    for prediction_id in ("a", "b", "late"):
        flights.add(prediction_id, done_at[prediction_id])
    flights.add("endless", None)
    assert flights.is_full(0.0) and flights.count(0.0) == 4 and flights.most_seen == 4
    assert flights.count(6.0) == 3  # "a" ended; "late" has not yet
    still_waiting.clear()
    assert flights.count(6.5) == 2
    flights.discard("endless")  # cancelled
    assert flights.count(11.0) == 0
