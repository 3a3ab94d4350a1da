"""What every flow shares: the predict-shard task, and the run around it: pick a plan's jobs, run them in
shards through one engine, store, summarise.

The unit of Prefect work is a shard of jobs, not a job: a task run costs milliseconds and tens of KB of
client memory, so per-job tasks would dominate a 100,000-image run. Inside a shard the engine runs many jobs
at once; a small window of shards is in flight, so memory stays bounded by the window, not the run. All
shards of a run share one API client, one request budget and one engine, so the quota holds process-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.utilities.annotations import quote

from promptgrid import interrupts
from promptgrid.api.client import ApiClient
from promptgrid.api.routes import ModelRoutes
from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.config import EngineConfig, PrepareInputs, WatchPolicy
from promptgrid.engine.engine import Engine
from promptgrid.engine.lost_creates import LostCreates
from promptgrid.engine.planning import RunPlan, Selection, Tally, select_jobs
from promptgrid.engine.progress import RunProgress, TerminalProgress
from promptgrid.engine.spend import spend_caps
from promptgrid.engine.unanswered import UnknownCreates, run_and_store, settle_unknown_creates
from promptgrid.errors import InvalidInput, PromptgridError, RunInterrupted
from promptgrid.output import run_log
from promptgrid.output.input_images import InputImages, InputServer, classify_image_ref
from promptgrid.output.journal import Journal
from promptgrid.output.lease import OutputLease, holding, lease_name, take_lease
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.saved_spec import save_models, save_spec
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.base import Sink
from promptgrid.quota.factory import check_quota_reachable, open_budget, quota_namespace, spec_limits
from promptgrid.redact import scrub
from promptgrid.run_summary import RunSummary
from promptgrid.settings import read_api_settings, require_api_key
from promptgrid.spec.schema import ApiConfig
from promptgrid.tasks.planning import plan_run
from promptgrid.tasks.repair import repair_output
from promptgrid.types import Job

if TYPE_CHECKING:
    from promptgrid.tasks.reporting import ProgressArtifact

T = TypeVar("T")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SHARD_SIZE = 200
SHARDS_IN_FLIGHT = 2
SHARD_RETRY_DELAYS_S = (2.0, 10.0)
TICK_S = 1.0


def as_is(value: T) -> T:
    """A task argument Prefect hands over untouched: not walked for futures, nor rebuilt (a spec's private
    state, an engine's locks), and typed as itself."""
    return cast(T, quote(value))


def chunked(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    shard: list[Job] = []
    for job in jobs:
        shard.append(job)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


@dataclass
class RunContext:
    """The run's shared machinery, handed to every shard."""

    engine: Engine
    store: OutcomeStore[RunProgress]
    terminal: TerminalProgress
    resume: dict[str, str] = field(default_factory=dict)
    # job_id -> attempt of a create sent by a run that died before its answer, and how to look for it
    uncertain: dict[str, int] = field(default_factory=dict)
    reconciler: LostCreates | None = None
    resend_unknown: bool = False  # a backfill chose these jobs: what the listing cannot find is sent anew
    score: tuple[str, ...] = ()  # the spec's `score:`: scorers for each shard's stored images


@task(name="predict-shard", retries=len(SHARD_RETRY_DELAYS_S), cache_policy=NO_CACHE)
async def predict_shard(jobs: list[Job], run: RunContext) -> int:
    """Run one shard's jobs to outcomes and store them; a retry skips what an earlier try stored."""
    store = run.store
    lost = run.reconciler or run.engine.lost_creates
    await settle_unknown_creates(jobs, run.uncertain, store, lost, resend=run.resend_unknown)
    todo = [job for job in jobs if job.job_id not in store.saved]
    try:
        await run_and_store(run.engine, todo, {**run.resume, **store.created}, store)
    except PromptgridError as exc:
        if exc is not run.engine.halted:
            raise
        # 402/401, a spend cap, a stall, the shared quota gone: retrying the shard cannot help; the flow
        # reports it once every shard has stopped.
    if run.score:
        await _score_stored(jobs, run)
    return len(todo)


async def _score_stored(jobs: list[Job], run: RunContext) -> None:
    """Score the shard's stored images; a scorer that fails costs the run nothing but a warning, since the
    images are paid for and stored (`promptgrid score OUTPUT` scores them later)."""
    from promptgrid.tasks.score import score_images

    stored = [job.job_id for job in jobs if job.job_id in run.store.saved]
    if not stored:
        return
    lease = run.store.lease
    await asyncio.to_thread(run.store.writer.flush)  # the scorer reads the shard's rows from the manifest
    try:
        await score_images(as_is(run.store.sink), run.score, stored, as_is(lease.check if lease else None))
    except Exception as exc:
        get_run_logger().warning(
            "scoring this shard's images failed (%s: %s); `promptgrid score OUTPUT` scores them later",
            type(exc).__name__,
            scrub(str(exc)),
        )


@contextlib.contextmanager
def input_images(sink: Sink, plan: RunPlan) -> Iterator[PrepareInputs]:
    """The engine's hook that turns a job's image reference into a URL the API can fetch, at create time.

    Local files staged in a local output are served on loopback, which only an API on this machine (the
    sandbox) can reach; with a remote API they need an S3 output, which presigns them.
    """
    with contextlib.ExitStack() as stack:
        server: InputServer | None = None
        if sink.folder is not None and urlsplit(plan.api.base_url).hostname in LOOPBACK_HOSTS:
            server = stack.enter_context(InputServer(sink))
        images = InputImages(sink, base_dir=plan.base_dir, server=server)

        async def prepare(job: Job) -> Mapping[str, Any]:
            ref = job.inputs.get("image")
            if not ref:
                return job.inputs
            if server is None and sink.folder is not None and classify_image_ref(ref) == "path":
                raise InvalidInput(
                    [f"image {ref!r}: a local file needs an s3:// output to be sent to a remote API"]
                )
            return {**job.inputs, "image": await asyncio.to_thread(images.url_for, ref)}

        yield prepare


def engine_config(api: ApiConfig, time_scale: float) -> EngineConfig:
    # Limits come from the spec as given (a sandbox run's are already scaled); only the engine's own
    # clocks (deadlines, backoff, poll intervals) follow the API's time scale.
    config = EngineConfig(
        limits=spec_limits(api),
        stall_timeout_s=api.stall_timeout,
        room_probes=api.room_probes,
        watch=WatchPolicy(enabled=api.listing_watch),
    )
    return config.scaled(time_scale)


async def run_plan(
    plan: RunPlan,
    selection: Selection,
    *,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    time_scale: float = 1.0,
    run_id: str | None = None,
    report: bool = True,
    wait: bool = False,
) -> State[RunSummary]:
    """Run the selected jobs of a plan to outcomes in its output; the final state carries the summary.

    The run holds the output's lease throughout (`wait`: until another run releases it, else OutputInUse),
    puts the output in order first (damaged manifest parts aside, rows of stored images rebuilt), and on
    Ctrl-C saves what is in progress before it raises RunInterrupted.
    """
    require_api_key(read_api_settings(plan.api.base_url))
    run_id = run_id or uuid.uuid4().hex[:12]
    sink = open_sink(plan.output)
    name = lease_name(selection.shard_index, selection.shard_count)
    lease = await take_lease(sink, name, run_id, wait=wait, on_wait=get_run_logger().warning)
    try:
        with (
            holding(lease),
            interrupts.stop_signals_handled(),
            run_log.recorded(sink, run_id, name) as record,
        ):
            held = _run_held(plan, selection, sink, lease, run_id, price_per_image, time_scale, report)
            return record.ended(await held)
    finally:
        if interrupts.stop_requested():
            interrupts.mark_saved()  # journal, manifest and lease are settled: the process may exit


async def _run_held(
    plan: RunPlan,
    selection: Selection,
    sink: Sink,
    lease: OutputLease,
    run_id: str,
    price_per_image: float,
    time_scale: float,
    report: bool,
) -> State[RunSummary]:
    from promptgrid.tasks.reporting import ProgressArtifact, finish_run

    settings = read_api_settings(plan.api.base_url)
    api_key = require_api_key(settings)  # checked by run_plan: the environment cannot have changed
    await asyncio.to_thread(save_spec, sink, plan.spec_text)
    if plan.models is not None:
        await asyncio.to_thread(save_models, sink, plan.models.models.values())
    journal = Journal(sink, writer_id=f"{run_id}-s{selection.shard_index}")
    writer = ManifestWriter(
        sink,
        run_id=run_id,
        spec_hash=plan.spec_hash,
        worker_id=f"s{selection.shard_index}",
        api_base=settings.base_url,
    )
    await repair_output(as_is(sink), as_is(journal), as_is(writer), as_is(selection.owns))
    latest, total, tally = await plan_run(as_is(plan), as_is(sink), as_is(selection))
    progress = RunProgress(total=total, skipped=tally.skipped, price_per_image=price_per_image)
    resume = await journal.load_async()
    unknown = await asyncio.to_thread(UnknownCreates.read, journal, latest, selection.rerun)
    config = engine_config(plan.api, time_scale)
    models = plan.models.models if plan.models else ()
    config = replace(config, spend=await asyncio.to_thread(spend_caps, plan.api, sink, models))
    await asyncio.to_thread(check_quota_reachable, plan.api.quota_url)  # before anything is sent
    budget = open_budget(config.limits, plan.api.quota_url, quota_namespace(api_key))
    failures: list[BaseException] = []
    interrupted = False
    async with ApiClient(settings.base_url, api_key) as client:
        store = OutcomeStore(sink, journal, writer, progress, lease)
        with input_images(sink, plan) as prepare, TerminalProgress(progress) as terminal:
            engine = Engine(
                client,
                budget,
                config,
                events=store,
                prepare_inputs=prepare,
                routes=ModelRoutes(plan.models.slugs() if plan.models else {}, retry_s=1 / time_scale),
            )
            progress.engine = engine.stats  # the summary says how the API's limits were met
            reconciler = unknown.search(engine)
            rerun = selection.rerun is not None
            run = RunContext(engine, store, terminal, resume, unknown.attempts, reconciler, rerun, plan.score)
            artifact = await ProgressArtifact.start(progress)
            ticker = asyncio.create_task(_tick(run, writer, artifact))
            jobs = select_jobs(plan, latest, selection, Tally())
            delays = [delay / time_scale for delay in SHARD_RETRY_DELAYS_S]
            shard_task = predict_shard.with_options(retry_delay_seconds=delays)
            shards = asyncio.create_task(_run_shards(chunked(jobs, SHARD_SIZE), run, shard_task))
            try:
                interrupted = await interrupts.until_done_or_stopped(shards)
                failures = [] if interrupted else shards.result()
            finally:
                # Saves in progress finish first; then the manifest's buffered rows and the journal.
                await store.drain()
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                await asyncio.to_thread(writer.close)
                await asyncio.to_thread(journal.close)
                if interrupted:  # a moment for the shards to wind down before the client closes
                    await asyncio.wait({shards}, timeout=1.0)
                await budget.aclose()
    if interrupted:
        raise RunInterrupted(
            f"stopped by {interrupts.stop_cause()}: {progress.succeeded} images saved, {progress.failed} "
            "failed; what was created is in the journal, so the same command continues without paying twice"
        )
    progress.api_requests += reconciler.api_requests
    return await finish_run(
        sink,
        progress,
        tally,
        run_id=run_id,
        failures=failures,
        halted=engine.halted,
        price_per_image=price_per_image,
        report=report,
        fail_when=plan.fail_when,
    )


async def _run_shards(
    shards: Iterator[list[Job]],
    run: RunContext,
    shard_task: Callable[..., Coroutine[Any, Any, int]],  # predict_shard, given quote()d arguments
) -> list[BaseException]:
    """Keep SHARDS_IN_FLIGHT shards going; a shard that fails after its retries is reported, not fatal."""
    pending: set[asyncio.Task[int]] = set()
    failures: list[BaseException] = []

    def collect(done: set[asyncio.Task[int]]) -> None:
        failures.extend(exc for t in done if (exc := t.exception()) is not None)

    try:
        for shard in shards:
            if run.engine.halted is not None or run.store.stopped:
                break
            if len(pending) >= SHARDS_IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                collect(done)
            pending.add(asyncio.create_task(shard_task(quote(shard), quote(run))))
        if pending:
            done, _ = await asyncio.wait(pending)
            collect(done)
    except asyncio.CancelledError:
        for shard_run in pending:  # stopping: each shard's engine cancels its jobs; stores finish
            shard_run.cancel()
        raise
    return failures


async def _tick(run: RunContext, writer: ManifestWriter, artifact: ProgressArtifact) -> None:
    """Once a second: refresh the display, commit manifest rows that waited too long, update the artifact."""
    logger = get_run_logger()
    while True:
        await asyncio.sleep(TICK_S)
        run.store.progress.in_flight = run.engine.stats.in_flight
        run.store.progress.throttled = run.engine.stats.throttled
        run.terminal.refresh()
        try:
            await asyncio.to_thread(writer.maybe_flush)
            await artifact.update()
        except Exception as exc:  # a slow store or API must not stop the run; the next tick tries again
            logger.warning("progress tick failed: %s", exc)
