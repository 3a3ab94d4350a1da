"""A run's face in Prefect: a progress artifact while it runs; at the end the report (a task), a summary
table and report link, and the final state carrying the run's `RunSummary`."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed

from promptgrid.engine.progress import RunProgress, summary_rows
from promptgrid.errors import ApiError, ApiUnreachable
from promptgrid.output.sinks.base import Sink
from promptgrid.run_summary import RunSummary
from promptgrid.spec.verdict import ANY_FAILURE, FailWhen

if TYPE_CHECKING:
    from promptgrid.engine.planning import Tally


class ProgressArtifact:
    """The run's progress in the Prefect UI, updated at most every `interval_s` (each update costs a call)."""

    def __init__(self, progress: RunProgress, artifact_id: UUID | None = None, interval_s: float = 5.0):
        self.progress, self.artifact_id, self.interval_s = progress, artifact_id, interval_s
        self._last = time.monotonic()

    @classmethod
    async def start(cls, progress: RunProgress) -> ProgressArtifact:
        if FlowRunContext.get() is None:  # plain Python use: nothing to show in Prefect
            return cls(progress)
        artifact_id = await acreate_progress_artifact(
            progress=progress.fraction(), description=f"promptgrid: {progress.describe()}"
        )
        return cls(progress, artifact_id)

    async def update(self, force: bool = False) -> None:
        if self.artifact_id is None or (not force and time.monotonic() - self._last < self.interval_s):
            return
        self._last = time.monotonic()
        await aupdate_progress_artifact(
            self.artifact_id, progress=self.progress.fraction(), description=self.progress.describe()
        )


@task(name="write-report", cache_policy=NO_CACHE)
async def write_report(sink: Sink, price_per_image: float) -> str | None:
    """Write the output's HTML report and contact sheets; the report's URI, or None when it could not be
    written (the run's images and manifest stand either way)."""
    from promptgrid.report.build import write_report

    try:
        return await asyncio.to_thread(write_report, sink, price_per_image=price_per_image)
    except Exception as exc:  # the images and manifest are what matter; a report can be rebuilt later
        get_run_logger().warning("could not write the report (run `promptgrid report` to retry): %s", exc)
        return None


async def finish_run(
    sink: Sink,
    progress: RunProgress,
    tally: Tally,
    *,
    run_id: str,
    failures: list[BaseException],
    halted: BaseException | None,
    price_per_image: float,
    report: bool = True,
    fail_when: FailWhen = ANY_FAILURE,
) -> State[RunSummary]:
    """Publish the summary and report, and end the run Completed or Failed with the summary as its result.

    Failed when shards failed, the API stopped the run, or more jobs failed than `fail_when` allows, so
    Prefect (its UI, automations) tells a bad run from a good one, and still holds what it did.
    """
    logger = get_run_logger()
    report_uri = await write_report(sink, price_per_image) if report else None
    rows = summary_rows(progress)
    if FlowRunContext.get() is not None:
        await acreate_table_artifact(table=rows, key="promptgrid-summary", description=f"run {run_id}")
        if report_uri:
            from promptgrid.report.build import report_url

            link = await asyncio.to_thread(report_url, sink)
            await acreate_link_artifact(link=link, link_text="promptgrid report", key="promptgrid-report")
    for row in rows:
        logger.info("%s: %s", row["metric"], row["value"])
    summary = RunSummary(
        output=sink.root,
        planned=progress.total,
        succeeded=progress.succeeded,
        failed=progress.failed,
        skipped=tally.skipped,
        previously_failed=tally.previously_failed,
        api_requests=progress.requests_sent,
        run_id=run_id,
        report=report_uri,
        fail_when=str(fail_when),
        problem=run_problem(progress, failures, halted, fail_when),
    )
    if summary.problem is not None:
        return Failed(message=summary.problem, data=summary)
    return Completed(message=summary.verdict, data=summary)


def run_problem(
    progress: RunProgress, failures: list[BaseException], halted: BaseException | None, fail_when: FailWhen
) -> str | None:
    """Why the run counts as failed, in one sentence; None when it does not."""
    if isinstance(halted, ApiUnreachable):
        return halted.explain()
    if halted is not None and not isinstance(halted, ApiError):  # the run's own halt: spend, stall, quota
        return f"{halted}"
    if halted is not None:
        return f"the API stopped this run: {halted}; rerun the same command to continue"
    if failures:
        return f"{len(failures)} shard(s) failed after retries; first: {failures[0]!r}"
    if fail_when.fails(progress.failed, progress.total):
        return (
            f"{progress.failed} of {progress.total} jobs did not succeed (fail_when: {fail_when}); "
            "their reasons are in the manifest"
        )
    return None
