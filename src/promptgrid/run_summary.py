"""What one run did, typed and frozen: the flows' final state, the command's exit code and text, the
notebook's return value (a core type, so every layer from the report up can hold one)."""

from __future__ import annotations

from dataclasses import dataclass, replace

# Exit codes of a run that got as far as running (InvalidInput is 2, Ctrl-C 130: see the CLI).
EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(frozen=True)
class RunSummary:
    """What one run did: jobs by outcome, requests sent, where the output and report are.

    `ok` is what exit code 0 means: the run ended Completed (no more jobs failed than the spec's
    `fail_when` allows, no shard failed, the API did not stop it) and no job failed in an earlier run. The
    reasons of failed jobs are rows of the manifest (`promptgrid.read_manifest`).
    """

    output: str
    planned: int  # jobs this run set out to do (the spec's, less those already in the manifest)
    succeeded: int
    failed: int
    skipped: int  # jobs already in the manifest, left alone
    previously_failed: int  # of the skipped: those whose latest outcome is a failure
    api_requests: int
    run_id: str | None = None  # None when nothing was left to do and no flow ran
    report: str | None = None  # the HTML report's URI, when there is one
    fail_when: str = "any"  # the spec's `fail_when`: how many failures make the run Failed
    problem: str | None = None  # why the run counts as failed, when it ended Failed

    @property
    def ok(self) -> bool:
        """True when the run ended Completed and no job failed earlier (unless `fail_when` is `never`)."""
        return self.problem is None and not (self.previously_failed and self.fail_when != "never")

    @property
    def exit_code(self) -> int:
        """The command's exit code for this run: 0 when `ok`, else 1."""
        return EXIT_OK if self.ok else EXIT_FAILED

    @property
    def verdict(self) -> str:
        """The run in one sentence: what failed, or what succeeded, or that there was nothing to do."""
        if self.problem is not None:
            return f"the run failed: {self.problem}"
        earlier = ""
        if self.previously_failed and self.fail_when != "never":
            earlier = f"; {self.previously_failed} jobs failed in an earlier run"
        if self.run_id is None and not self.planned:
            return f"nothing to do: all {self.skipped} jobs are in the manifest already{earlier}"
        return f"{self.succeeded} of {self.planned} jobs succeeded{earlier}"

    def with_problem(self, problem: str | None) -> RunSummary:
        return replace(self, problem=problem)

    def describe(self) -> str:
        """What the command prints when a run ends: counts, where images, manifest and report are, and
        how to retry what failed."""
        lines = [
            f"{self.succeeded} images generated, {self.failed} failed, {self.skipped} already done "
            f"({self.previously_failed} of those failed earlier); {self.api_requests} API requests",
            f"images:   {self.output}/images/",
            f"manifest: {self.output}/manifest/ (see `promptgrid manifest show {self.output}`)",
        ]
        if self.report:
            lines.append(f"report:   {self.report}")
        if self.failed or self.previously_failed:
            lines.append(f"retry failures with: promptgrid backfill {self.output}")
        return "\n".join(lines)

    def __str__(self) -> str:
        text = self.describe()
        return text if self.problem is None else f"{text}\nthe run failed: {self.problem}"
