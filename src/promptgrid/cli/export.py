"""The `promptgrid export` command: an output as Hugging Face Parquet or WebDataset tar shards.

Exit codes: 0 exported (or already exported), 1 exported without some images that could not be read (the
card and stats.json name them), 2 invalid input (a sandbox run's renders without --include-sandbox among
it); 130 when interrupted (running it again resumes). `--dry-run` says what would be written, writing nothing.
"""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from promptgrid.errors import InvalidInput

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from promptgrid.export.exporter import ExportProgress, ExportResult
    from promptgrid.export.preview import ExportPreview

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MIN_SHARD_BYTES = 1024


def parse_size(text: str) -> int:
    """`500MB` -> 500,000,000; `64MiB` -> 67,108,864; a bare number is bytes."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InvalidInput([f"--shard-size {text!r}: expected a size such as 500MB, 1GB or 64MiB"])
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < MIN_SHARD_BYTES:
        raise InvalidInput(
            [f"--shard-size {text!r}: a shard must be allowed at least {MIN_SHARD_BYTES} bytes"]
        )
    return size


class ExportDisplay:
    """A live bar on an interactive terminal; elsewhere a line per shard and at most one every 10 s."""

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 10.0):
        self.stream, self.interval_s = stream, interval_s
        self._live: Progress | None = None
        self._bar: TaskID | None = None
        self._last = (0.0, 0)

    def __enter__(self) -> ExportDisplay:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("[bold]export"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
            )
            self._live = Progress(*columns, TimeElapsedColumn(), console=Console(file=self.stream))
            self._live.__enter__()
            self._bar = self._live.add_task("", total=None)
        return self

    def __call__(self, progress: ExportProgress) -> None:
        text = f"{progress.rows} rows written, {progress.shards} shards ({progress.bytes / 1e6:,.1f} MB)"
        if self._live is not None and self._bar is not None:
            self._live.update(self._bar, completed=progress.examined, total=progress.total, description=text)
            return
        due = time.monotonic() - self._last[0] >= self.interval_s or progress.shards != self._last[1]
        if due:
            self._last = (time.monotonic(), progress.shards)
            print(f"export: {progress.examined}/{progress.total} rows examined, {text}", file=self.stream)

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)


def describe_result(result: ExportResult) -> str:
    tally = result.tally
    head = "already exported, nothing to do: " if result.already_complete else ""
    resumed = ""
    if result.resumed_shards and not result.already_complete:
        resumed = f" ({result.resumed_shards} kept from an earlier export)"
    shards = f"{result.shards} shard{'' if result.shards == 1 else 's'}"
    lines = [
        f"{head}{tally.rows} rows, {tally.images} images ({tally.bytes / 1e6:,.1f} MB) in {shards}{resumed}",
        f"destination: {result.dest}  (card: README.md, totals: stats.json)",
    ]
    if result.splits:
        lines.append("splits: " + ", ".join(f"{name} {rows}" for name, rows in result.splits.items()))
    if result.dropped_shards:
        lines.append(f"shards written again (a job in them ran again): {result.dropped_shards}")
    if tally.duplicates:
        lines.append(f"near-duplicates dropped: {tally.duplicates}")
    if tally.unreadable:
        lines.append(f"left out, could not be read or did not match the manifest: {tally.unreadable}")
        lines += [f"  {problem}" for problem in tally.problems]
    return "\n".join(lines)


def describe_preview(preview: ExportPreview) -> str:
    if preview.complete:
        return "dry run: already exported, an export would write nothing"
    rows = sum(preview.new_rows.values())
    per_split = ", ".join(f"{name} {count}" for name, count in sorted(preview.new_rows.items()))
    lines = [
        f"dry run: would examine {rows} rows and write those that pass" + (f" ({per_split})" if rows else "")
    ]
    if preview.fresh:
        lines.append("no earlier export under this plan here: everything is written anew")
    else:
        lines.append(f"kept from an earlier export: {preview.kept_shards} shards, {preview.kept_rows} rows")
    if preview.dropped_shards:
        lines.append(f"shards to write again (a job in them ran again): {preview.dropped_shards}")
    if preview.from_sandbox:
        lines.append("the images are sandbox renders: the card will label them as placeholders")
    lines.append("nothing was written")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        output: Annotated[
            str, typer.Argument(help="The run's output: a local folder or s3://bucket/prefix.")
        ],
        to: Annotated[
            str, typer.Option("--to", help="Where to write: a local folder or s3://bucket/prefix.")
        ],
        export_format: Annotated[
            str, typer.Option("--format", help="hf (Parquet for Hugging Face datasets) or webdataset (tar).")
        ] = "hf",
        where: Annotated[
            str | None, typer.Option(help='An SQL condition on manifest columns, e.g. "cfg > 4".')
        ] = None,
        status: Annotated[str, typer.Option(help="Comma-separated latest statuses to export.")] = "success",
        shard_size: Annotated[
            str, typer.Option(help="Start a new shard past this size, e.g. 500MB.")
        ] = "500MB",
        samples_per_shard: Annotated[
            int | None, typer.Option(min=1, help="Start a new shard after this many samples, too.")
        ] = None,
        dedup: Annotated[
            bool, typer.Option("--dedup", help="Drop images within --dedup-distance of an earlier one.")
        ] = False,
        dedup_distance: Annotated[
            int, typer.Option(min=0, max=32, help="Bits of 64 two perceptual hashes may differ by.")
        ] = 4,
        license_line: Annotated[
            str | None, typer.Option("--license", help="The dataset's licence, e.g. cc-by-4.0, for the card.")
        ] = None,
        restart: Annotated[
            bool, typer.Option("--restart", help="Start over instead of keeping the shards already exported.")
        ] = False,
        include_sandbox: Annotated[
            bool,
            typer.Option("--include-sandbox", help="Export a sandbox run's placeholder renders (labelled)."),
        ] = False,
        keep_source_uris: Annotated[
            bool,
            typer.Option("--keep-source-uris", help="Keep image_uri and the output's location (private)."),
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would be exported; write nothing.")
        ] = False,
        wait: Annotated[
            bool, typer.Option("--wait", help="When a run is writing OUTPUT, wait for it to end.")
        ] = False,
    ) -> None:
        """Export OUTPUT's images and manifest rows as Parquet (--format hf) or tar shards (webdataset)."""
        from promptgrid.export.exporter import FORMATS, ExportOptions, export_output
        from promptgrid.export.preview import preview_export
        from promptgrid.output.lease import wait_until_unheld
        from promptgrid.output.sinks import open_sink

        if export_format not in FORMATS:
            raise InvalidInput([f"--format {export_format!r}: expected one of {', '.join(FORMATS)}"])
        options = ExportOptions(
            output=output,
            dest=to,
            format=export_format,
            statuses=tuple(part.strip() for part in status.split(",") if part.strip()),
            where=where,
            shard_bytes=parse_size(shard_size),
            samples_per_shard=samples_per_shard,
            dedup_distance=dedup_distance if dedup else None,
            license=license_line,
            restart=restart,
            include_sandbox=include_sandbox,
            keep_source_uris=keep_source_uris,
        )
        if dry_run:
            typer.echo(describe_preview(preview_export(options)))
            return
        try:
            # An output a run is still writing would export half done: wait for it, or stop naming it.
            wait_until_unheld(
                open_sink(output), wait=wait, on_wait=lambda text: print(f"note: {text}", file=sys.stderr)
            )
            with ExportDisplay() as display:
                result = export_output(options, on_progress=display)
        except KeyboardInterrupt:
            print(
                "interrupted: the shards finished so far are kept; run the same command to resume",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None
        typer.echo(describe_result(result))
        raise typer.Exit(1 if result.tally.unreadable else 0)
