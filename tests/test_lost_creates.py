"""Lost creates settled against the sandbox at the contract's edges, never on a guess.

A run killed with its creates on the wire is replayed with the real writers: an intent in the journal, a
create that reached the sandbox (which made and billed a prediction), no record of its answer. The rerun
goes the way a shard does (unanswered creates settled, then the jobs run into the store). Every row is then
checked against what the API made: the prediction it names was made from that row's own inputs.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from PIL import Image

from promptgrid.api.client import ApiClient
from promptgrid.api.gateway import Gateway, ReadRetry
from promptgrid.api.routes import ModelRoutes
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.engine.matching import staged_image
from promptgrid.engine.progress import RunProgress
from promptgrid.engine.unanswered import UnknownCreates, run_and_store, settle_unknown_creates
from promptgrid.models.check import check_input
from promptgrid.output.input_images import InputImages, InputServer
from promptgrid.output.journal import Journal
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.base import Sink
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.sandbox import TEST_TIME_SCALE

KEY = "sk-lost-creates-test-key"
DASHED, DOTTED = "stable-diffusion-3-5-large", "stable-diffusion-3.5-large"
Prepare = Callable[[Job], Awaitable[Mapping[str, Any]]]


def job(n: int, prompt: str, **inputs: Any) -> Job:
    checked, errors = check_input(DASHED, {"prompt": prompt, "seed": 7, "output_format": "png", **inputs})
    assert not errors, errors
    return Job(job_id=f"{n:064x}", model=DASHED, inputs=checked)


def config() -> EngineConfig:
    limits = Limits(requests=6000, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=10)
    return EngineConfig(limits=limits, deadline_s=600.0).scaled(TEST_TIME_SCALE)


async def as_is(job: Job) -> Mapping[str, Any]:
    return job.inputs


async def leave_lost_creates(url: str, sink: Sink, jobs: list[Job], prepare: Prepare, slug: str) -> None:
    """What a run killed with these creates on the wire leaves: intents, paid predictions, no records."""
    journal = Journal(sink, "killed-s0")
    async with ApiClient(url, ApiKey(KEY)) as client:
        for lost in jobs:
            await journal.intend(lost.job_id, 1)
            await client.create(slug, lost.version, await prepare(lost))
    journal.close()


async def rerun(
    url: str,
    sink: Sink,
    jobs: list[Job],
    prepare: Prepare = as_is,
    slugs: Mapping[str, str] | None = None,
) -> Engine:
    """The jobs run again as a shard runs them; returns the engine, for its counters."""
    journal = Journal(sink, "rerun-s0")
    unknown = UnknownCreates.read(journal, {}, None)
    settings = config()
    with ManifestWriter(sink, run_id="rerun", spec_hash="h") as writer:
        async with ApiClient(url, ApiKey(KEY)) as client:
            store = OutcomeStore(sink, journal, writer, RunProgress(total=len(jobs)))
            engine = Engine(
                client,
                LocalBudget(settings.limits),
                settings,
                events=store,
                prepare_inputs=prepare,
                routes=ModelRoutes(slugs or {}),
            )
            await settle_unknown_creates(jobs, unknown.attempts, store, unknown.search(engine))
            todo = [one for one in jobs if one.job_id not in store.saved]
            await run_and_store(engine, todo, dict(store.created), store)
    journal.close()
    return engine


async def assert_every_row_is_its_own(url: str, sink: Sink, jobs: list[Job]) -> None:
    """Every job has a success row whose prediction the API made from that job's prompt and image."""
    rows = {row["job_id"]: row for row in read_manifest(sink).to_pylist()}
    assert set(rows) == {one.job_id for one in jobs}
    # Through a budget of its own, which waits out the sandbox's per-key window: the run just before may
    # have filled it, and the check's reads are not the run's to be counted against (seen on a loaded CI).
    retry = ReadRetry(tries=4, throttled_tries=50)
    async with ApiClient(url, ApiKey(KEY)) as client:
        gateway = Gateway(client, LocalBudget(Limits.auto()))
        for one in jobs:
            row = rows[one.job_id]
            assert row["status"] == JobStatus.SUCCESS.value, row["error_message"]
            made = (await gateway.get(row["prediction_id"], retry)).inputs or {}
            assert made["prompt"] == one.inputs["prompt"], (made["prompt"], one.inputs["prompt"])
            if one.inputs.get("image"):
                assert staged_image(made["image"]) == one.inputs["image"].rsplit("/", 1)[1]


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "PNG")
    return out.getvalue()


async def test_killed_img2img_creates_of_one_prompt_and_seed_each_keep_their_own_image(
    sandbox_factory, tmp_path
):
    sandbox = sandbox_factory()
    sink = open_sink(str(tmp_path / "out"))
    jobs = []
    for n, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]):
        (tmp_path / f"in{n}.png").write_bytes(png(colour))
        staged = InputImages(sink).stage(str(tmp_path / f"in{n}.png"))
        jobs.append(job(n, "the same harbour", image=f"http://127.0.0.1:1/{staged}"))

    def preparer(server: InputServer) -> Prepare:
        async def prepare(one: Job) -> Mapping[str, Any]:  # the staged file, served from this run's address
            return {**one.inputs, "image": server.url_for(one.inputs["image"].split("/", 3)[3])}

        return prepare

    with InputServer(sink) as killed, InputServer(sink) as again:
        assert killed.base_url != again.base_url
        await leave_lost_creates(sandbox.url, sink, jobs, preparer(killed), DASHED)
        engine = await rerun(sandbox.url, sink, jobs, preparer(again))
        await assert_every_row_is_its_own(sandbox.url, sink, jobs)
    stats = sandbox.stats()
    assert stats["creates"] == len(jobs) and stats["duplicate_creates"] == 0
    assert engine.stats.creates == 0  # all four adopted, none sent again


async def test_killed_creates_of_number_like_prompts_each_keep_their_own_image(sandbox_factory, tmp_path):
    sandbox = sandbox_factory()
    sink = open_sink(str(tmp_path / "out"))
    jobs = [job(n, prompt) for n, prompt in enumerate(["10", "1e1", "10.0", "1E1", "+10", "10.00"])]
    await leave_lost_creates(sandbox.url, sink, jobs, as_is, DASHED)
    await rerun(sandbox.url, sink, jobs)
    await assert_every_row_is_its_own(sandbox.url, sink, jobs)
    assert sandbox.stats()["creates"] == len(jobs)


@pytest.mark.parametrize(
    "api",
    [
        {"slug_spelling": "dotted"},
        {"foreign_executions": 250, "executions_count_cap": 100},
    ],
    ids=["other-spelling", "capped-behind-250-foreign-rows"],
)
async def test_every_lost_create_is_adopted_with_no_second_create(sandbox_factory, tmp_path, api):
    sandbox = sandbox_factory(**api)
    sink = open_sink(str(tmp_path / "out"))
    sent_as = DOTTED if api.get("slug_spelling") == "dotted" else DASHED
    jobs = [job(n, f"a lighthouse, study {n}") for n in range(6)]
    await leave_lost_creates(sandbox.url, sink, jobs, as_is, sent_as)
    engine = await rerun(sandbox.url, sink, jobs, slugs={DASHED: sent_as})
    await assert_every_row_is_its_own(sandbox.url, sink, jobs)
    stats = sandbox.stats()
    assert stats["creates"] == len(jobs) and stats["duplicate_creates"] == 0 and engine.stats.creates == 0


async def test_creates_made_then_answered_500_or_never_answered_cost_nothing_twice(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(create_made_5xx_rate=0.1, create_held_rate=0.1, seed=4)
    sink = open_sink(str(tmp_path / "out"))
    jobs = [job(n, f"a glass bottle, take {n}") for n in range(40)]
    engine = await rerun(sandbox.url, sink, jobs)
    stats = sandbox.stats()
    assert stats["faults"].get("create_made_then_5xx", 0) >= 2, "the seed must answer some creates 500"
    assert stats["faults"].get("create_held", 0) >= 1, "the seed must hold some answers back"
    assert stats["duplicate_creates"] == 0 and stats["creates"] == len(jobs)
    lost = stats["faults"]["create_made_then_5xx"] + stats["faults"]["create_held"]
    assert engine.stats.adopted_creates == lost
    await assert_every_row_is_its_own(sandbox.url, sink, jobs)
