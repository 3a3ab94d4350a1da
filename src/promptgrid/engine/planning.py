"""What a run has to do, worked out without Prefect: the plan, which jobs it takes, and what is already done.

Kept apart from the pipeline so that a run with nothing left to do ends before Prefect is even imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from promptgrid.api.resolve import Resolution
from promptgrid.errors import InvalidInput
from promptgrid.output.manifest.read import latest_status
from promptgrid.output.sinks.base import Sink
from promptgrid.spec.expand import iter_job_batches
from promptgrid.spec.schema import ApiConfig, SweepSpec
from promptgrid.spec.verdict import ANY_FAILURE, FailWhen
from promptgrid.types import Job, JobStatus


@dataclass(frozen=True)
class Selection:
    """Which of a spec's jobs a run takes: its shard of the spec, minus jobs the manifest already has.

    A backfill names the jobs to run again in `rerun` instead; they are taken whatever their last status,
    except that one which succeeded since it was chosen (another run got there first) is not paid again,
    unless `rerun_successes` (a backfill that asked for successes).
    """

    shard_index: int = 0
    shard_count: int = 1
    rerun: frozenset[str] | None = None
    rerun_successes: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.shard_index < self.shard_count:
            raise InvalidInput([f"shard_index must be in 0..{self.shard_count - 1}, got {self.shard_index}"])

    def owns(self, job_id: str) -> bool:
        return self.shard_count == 1 or int(job_id[:12], 16) % self.shard_count == self.shard_index


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs: where to send and store, and the job source (read twice: count, then run)."""

    api: ApiConfig
    output: str
    spec_text: str
    spec_hash: str
    batches: Callable[[], Iterable[list[Job]]]
    base_dir: Path = Path(".")  # where relative image paths in the grid are found
    fail_when: FailWhen = ANY_FAILURE
    models: Resolution | None = None  # which slug each model is sent as, and its schema
    score: tuple[str, ...] = ()  # the scorers a run applies to each shard's images once they are stored

    @classmethod
    def from_spec(cls, spec: SweepSpec, models: Resolution | None = None) -> RunPlan:
        return cls(
            spec.api,
            spec.output,
            spec.source_text,
            spec.spec_hash,
            lambda: iter_job_batches(spec),
            spec.source_path.parent,
            spec.fail_when,
            models,
            tuple(spec.score),
        )


@dataclass
class Tally:
    """What selection passed over: jobs already recorded, and how many of those did not succeed."""

    skipped: int = 0
    previously_failed: int = 0


def select_jobs(plan: RunPlan, latest: dict[str, str], selection: Selection, tally: Tally) -> Iterator[Job]:
    for batch in plan.batches():
        for job in batch:
            if not selection.owns(job.job_id):
                continue
            if selection.rerun is not None:
                succeeded = latest.get(job.job_id) == JobStatus.SUCCESS and not selection.rerun_successes
                if job.job_id in selection.rerun and not succeeded:
                    yield job
                continue
            status = latest.get(job.job_id)
            if status is None:
                yield job
                continue
            tally.skipped += 1
            tally.previously_failed += status != JobStatus.SUCCESS


def plan_selection(plan: RunPlan, sink: Sink, selection: Selection) -> tuple[dict[str, str], int, Tally]:
    """Read what is done, count what is left: one streaming pass, so progress can show an ETA."""
    latest = latest_status(sink)
    tally = Tally()
    total = sum(1 for _ in select_jobs(plan, latest, selection, tally))
    return latest, total, tally
