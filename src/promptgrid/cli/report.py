"""The `promptgrid report` command: write an output's HTML report and contact sheets."""

from __future__ import annotations

from typing import Annotated

import typer

from promptgrid.defaults import PRICE_PER_IMAGE_USD


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_command(
        output: Annotated[
            str, typer.Argument(help="The run's output: a local folder or s3://bucket/prefix.")
        ],
        across: Annotated[
            str | None, typer.Option(help="Parameter laid out across each grid (default: the first swept).")
        ] = None,
        down: Annotated[
            str | None, typer.Option(help="Parameter laid out down each grid (default: the second swept).")
        ] = None,
        group_by: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated columns whose values set grids apart (default: the prompt, or the "
                "template when a variable is on an axis), e.g. template or lighting."
            ),
        ] = None,
        price_per_image: Annotated[
            float, typer.Option(help="USD per image, for the cost when the API reported none.")
        ] = PRICE_PER_IMAGE_USD,
        page_size: Annotated[int, typer.Option(min=1, help="Prompts per HTML page.")] = 25,
        sheets: Annotated[
            bool,
            typer.Option(
                "--sheets/--no-sheets", metavar="", help="Also draw one PNG contact sheet per prompt."
            ),
        ] = True,
        link_expires_s: Annotated[
            int, typer.Option(min=1, max=604800, help="S3 only: how long the report's presigned links work.")
        ] = 604800,
    ) -> None:
        """Write OUTPUT/report/index.html (grids per prompt, failures with reasons, a run summary)."""
        from promptgrid.errors import InvalidInput
        from promptgrid.output.manifest.read import part_keys
        from promptgrid.output.sinks import open_sink
        from promptgrid.report.build import write_report

        sink = open_sink(output)
        if not part_keys(sink):
            raise InvalidInput(
                [f"{output}: no manifest found (manifest/*.parquet); run `promptgrid run` first."]
            )
        uri = write_report(
            sink,
            across=across,
            down=down,
            group_by=[name.strip() for name in (group_by or "").split(",") if name.strip()],
            price_per_image=price_per_image,
            page_size=page_size,
            sheets=sheets,
            link_expires_s=link_expires_s,
        )
        typer.echo(uri)
