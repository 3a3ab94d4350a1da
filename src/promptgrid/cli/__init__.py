"""The `promptgrid` command, the top layer: one Typer app, each subcommand registered from its own module.

Exit codes: 0 every job succeeded, 1 some failed or the run could not finish, 2 invalid input or an
unusable or busy output (nothing sent), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

# Prefect's telemetry lookups fail without internet and log errors; users may still turn it on.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer  # noqa: E402

from promptgrid import interrupts  # noqa: E402
from promptgrid.cli import export, manifest, models, report, run, sandbox, score, status  # noqa: E402
from promptgrid.errors import InvalidInput, PromptgridError  # noqa: E402

app = typer.Typer(
    name="promptgrid",
    help="Turn prompt grids into image datasets through a text-to-image prediction API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (README)
)


def _print_version(asked: bool) -> None:
    if asked:
        from promptgrid.version import VERSION

        typer.echo(f"promptgrid {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            metavar="",
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Keep `promptgrid` a group of subcommands, even while only one is registered."""


for module in (run, models, sandbox, manifest, report, export, status):
    module.register(app)
score.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before or after a run (a run's own is handled by `run`)
        print("interrupted", file=sys.stderr)
        sys.exit(interrupts.EXIT_CODE)
    except InvalidInput as exc:
        print(f"error: {exc.describe()}", file=sys.stderr)
        sys.exit(2)
    except PromptgridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
