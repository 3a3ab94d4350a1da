"""The `promptgrid manifest` command: show an output's manifest by status, compact its parts into one, or
check it (damaged parts, stored images without rows) and repair it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from promptgrid.errors import InvalidInput

if TYPE_CHECKING:
    from promptgrid.output.recovery import Recovery

OutputArgument = Annotated[
    str, typer.Argument(help="The run's output: a local folder or s3://bucket/prefix.")
]


def register(app: typer.Typer) -> None:
    manifest_app = typer.Typer(help="Inspect or compact a run's Parquet manifest.", no_args_is_help=True)
    app.add_typer(manifest_app, name="manifest")

    @manifest_app.command("show")
    def show_command(output: OutputArgument) -> None:
        """Print how many jobs are in each status (by each job's latest row), and where they came from."""
        from promptgrid.output.manifest.read import part_keys, provenance, status_counts
        from promptgrid.output.sinks import open_sink

        sink = open_sink(output)
        parts = part_keys(sink)
        if not parts:
            raise InvalidInput(
                [f"{output}: no manifest here (no {sink.root}/manifest/*.parquet); is this a run's output?"]
            )
        counts = status_counts(sink)
        typer.echo(f"manifest: {sink.root}/manifest ({len(parts)} parts)")
        for status, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            typer.echo(f"  {status:<10} {count:>8}")
        typer.echo(f"  {'total':<10} {sum(counts.values()):>8}")
        for name, value in sorted(provenance(sink).items()):
            typer.echo(f"{name.removeprefix('promptgrid.')}: {value}")

    @manifest_app.command("compact")
    def compact_command(output: OutputArgument) -> None:
        """Rewrite the manifest's parts as one part holding each job's latest row."""
        from promptgrid.output.manifest.read import part_keys
        from promptgrid.output.manifest.writer import compact
        from promptgrid.output.sinks import open_sink

        sink = open_sink(output)
        before = len(part_keys(sink))
        rows = compact(sink)
        typer.echo(f"compacted {before} parts into {len(part_keys(sink))}: {rows} jobs")

    @manifest_app.command("check")
    def check_command(
        output: OutputArgument,
        repair: Annotated[
            bool,
            typer.Option(
                "--repair",
                metavar="",
                help="Move damaged parts aside and rebuild rows of stored images from the journal.",
            ),
        ] = False,
    ) -> None:
        """Find damaged manifest parts and stored images without a row; with --repair, fix both.

        Exit 0 when the manifest is whole (or was repaired), 1 when problems were found and left.
        """
        from promptgrid.output import recovery
        from promptgrid.output.journal import Journal
        from promptgrid.output.lease import OutputLease, lease_name
        from promptgrid.output.manifest.read import provenance
        from promptgrid.output.manifest.writer import ManifestWriter
        from promptgrid.output.sinks import open_sink

        sink = open_sink(output)
        run_id = f"repair-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        journal = Journal(sink, writer_id=run_id)
        if not repair:
            found, _ = recovery.inspect(sink, journal, whole=True)
            _describe(found, sink.root)
            if not found.healthy:
                typer.echo(f"repair with: promptgrid manifest check --repair {output}")
            raise typer.Exit(0 if found.healthy else 1)
        # Repairing writes to the output: it holds the whole output's lease, like a run.
        with OutputLease(sink, lease_name(), run_id) as lease:
            lease.take()
            spec_hash = provenance(sink).get("promptgrid.spec_hash", "")
            with ManifestWriter(sink, run_id=run_id, spec_hash=spec_hash, worker_id="repair") as writer:
                done = recovery.repair(sink, journal, writer, whole=True)
        _describe(done, sink.root)
        for moved in done.quarantined:
            typer.echo(f"moved aside: {sink.root}/{moved}")
        typer.echo(f"rebuilt {done.rebuilt} success rows from the journal")


def _describe(found: Recovery, root: str) -> None:
    typer.echo(f"manifest: {root}/manifest ({found.parts} parts)")
    for part in found.damaged:
        typer.echo(f"  damaged: {part.key} ({part.reason})")
    typer.echo(
        f"  stored images without a success row: {len(found.recoverable)} (recoverable from the journal)"
    )
    if found.unverified:
        typer.echo(
            f"  journal records whose image is missing or differs: {len(found.unverified)} "
            "(their jobs run again, polling the predictions already paid for)"
        )
