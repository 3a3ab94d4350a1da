"""The `promptgrid manifest` command: show an output's manifest by status, or compact its parts into one."""

from __future__ import annotations

from typing import Annotated

import typer

from promptgrid.errors import InvalidInput

OutputArgument = Annotated[
    str, typer.Argument(help="The run's output: a local folder or s3://bucket/prefix.")
]


def register(app: typer.Typer) -> None:
    manifest_app = typer.Typer(help="Inspect or compact a run's Parquet manifest.", no_args_is_help=True)
    app.add_typer(manifest_app, name="manifest")

    @manifest_app.command("show")
    def show_command(output: OutputArgument) -> None:
        """Print how many jobs are in each status (by each job's latest row), and where they came from."""
        from promptgrid.tasks.output.manifest.read import part_keys, provenance, status_counts
        from promptgrid.tasks.output.sinks import open_sink

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
        from promptgrid.tasks.output.manifest.read import part_keys
        from promptgrid.tasks.output.manifest.writer import compact
        from promptgrid.tasks.output.sinks import open_sink

        sink = open_sink(output)
        before = len(part_keys(sink))
        rows = compact(sink)
        typer.echo(f"compacted {before} parts into {len(part_keys(sink))}: {rows} jobs")
