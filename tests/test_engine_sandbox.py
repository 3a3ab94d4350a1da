"""The engine against the sandbox API on loopback: quota kept exactly, and no job lost when faults are on."""

from __future__ import annotations

from collections import Counter

from promptgrid.api.client import ApiClient
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.models.check import check_input
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.sandbox.predictions import input_hash
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.events import Events
from tests.support.sandbox import TEST_TIME_SCALE

MODEL = "stable-diffusion-3-5-large"


def jobs(count: int) -> list[Job]:
    out = []
    for n in range(count):
        inputs, errors = check_input(
            MODEL, {"prompt": f"a lighthouse, take {n}", "seed": n, "output_format": "jpg"}
        )
        assert not errors
        out.append(Job(job_id=f"job-{n}", model=MODEL, inputs=inputs))
    return out


async def run_all(url: str, config: EngineConfig, batch: list[Job]):
    journal: dict[str, list[str]] = {}

    async def on_created(job: Job, prediction_id: str, attempt: int) -> None:
        journal.setdefault(job.job_id, []).append(prediction_id)

    async with ApiClient(url, ApiKey("sk-sandbox-engine-test")) as client:
        engine = Engine(client, LocalBudget(config.limits), config, events=Events(on_created=on_created))
        outcomes = [outcome async for outcome in engine.run(batch)]
    return outcomes, journal, engine


def scaled_config(polls_count: bool, deadline_s: float = 600.0) -> EngineConfig:
    limits = Limits(requests=60, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=10, polls_count=polls_count)
    return EngineConfig(limits=limits, deadline_s=deadline_s).scaled(TEST_TIME_SCALE)


async def test_every_image_within_the_quota_and_never_a_duplicate(sandbox_factory):
    sb = sandbox_factory(polls_count=True)
    batch = jobs(40)
    outcomes, journal, engine = await run_all(sb.url, scaled_config(polls_count=True), batch)
    stats = sb.stats()
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 40}
    assert stats["throttled"] == 0 and stats["duplicate_creates"] == 0
    assert stats["max_window_requests"] <= 60 and stats["max_in_flight"] <= 10
    assert sum(o.api_requests for o in outcomes) == stats["requests"]["create"] + stats["requests"]["get"]
    assert all(len(ids) == 1 and ids[0] == o.prediction_id for o in outcomes for ids in [journal[o.job_id]])
    assert len({o.sha256 for o in outcomes}) == 40


async def test_with_faults_every_job_ends_with_a_reason_and_extra_creates_are_recorded_attempts(
    sandbox_factory,
):
    sb = sandbox_factory(
        polls_count=False,
        get_5xx_rate=0.05,
        create_5xx_rate=0.05,
        error_rate=0.1,
        never_finish_rate=0.05,
        url_lifetime_s=60.0,
        seed=7,
    )
    batch = jobs(60)
    outcomes, journal, engine = await run_all(
        sb.url, scaled_config(polls_count=False, deadline_s=40.0), batch
    )
    stats = sb.stats()
    assert sorted(o.job_id for o in outcomes) == sorted(job.job_id for job in batch)  # none lost
    for outcome in outcomes:
        assert outcome.status in set(JobStatus)
        if outcome.status is not JobStatus.SUCCESS:
            assert outcome.error_code and outcome.error_message
    creates_per_input = stats["creates_per_input"]
    for job, outcome in zip(batch, sorted(outcomes, key=lambda o: int(o.job_id.split("-")[1])), strict=True):
        assert creates_per_input.get(input_hash(MODEL, job.inputs), 0) <= outcome.attempts
        assert len(journal.get(job.job_id, [])) <= outcome.attempts
    assert stats["throttled"] == 0
    codes = Counter(o.error_code for o in outcomes)
    assert codes["DEADLINE_EXCEEDED"] >= 1 and stats["requests"]["cancel"] >= codes["DEADLINE_EXCEEDED"]
