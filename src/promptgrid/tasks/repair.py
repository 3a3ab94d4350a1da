"""The output-repair task: an output put back in order before a run adds to it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptgrid.output.journal import Journal
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recovery import repair
from promptgrid.output.sinks.base import Sink


@task(name="repair-output", cache_policy=NO_CACHE)
async def repair_output(
    sink: Sink, journal: Journal, writer: ManifestWriter, owns: Callable[[str], bool]
) -> None:
    """Damaged manifest parts moved aside, rows of images stored by a run that died rebuilt
    (`promptgrid.output.recovery.repair`), for the jobs this run owns."""
    await asyncio.to_thread(repair, sink, journal, writer, owns=owns)  # file and S3 calls: off the loop
