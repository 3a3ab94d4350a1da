"""The `promptgrid models show SLUG` command: a model's inputs, defaults and ranges as the API states them."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from typing import TYPE_CHECKING, Annotated, Any

import typer

from promptgrid.cli.options import ApiBase, Sandbox, TimeScale, api_options
from promptgrid.errors import InvalidInput

if TYPE_CHECKING:
    from promptgrid.models.records import ModelRecord

DESCRIPTION_WIDTH = 60


def _type_text(prop: dict[str, Any], required: bool) -> str:
    from promptgrid.models.schema import kinds_of

    kinds = sorted(kinds_of(prop) - {"null"}) or ["any"]
    nullable = " or null" if "null" in kinds_of(prop) else ""
    return "/".join(kinds) + nullable + (" (required)" if required else "")


def describe_model(record: ModelRecord) -> str:
    """The model's inputs as a table: name, type, default, what is allowed, and the schema's description."""
    schema = record.schema()
    rows = [("input", "type", "default", "allowed", "description")]
    for name, prop in schema.properties.items():
        default = prop.get("default")
        rows.append(
            (
                name,
                _type_text(prop, name in schema.required),
                "-" if default is None else json.dumps(default),
                schema.allowed(name),
                textwrap.shorten(str(prop.get("description") or ""), DESCRIPTION_WIDTH, placeholder="..."),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"model {record.model}: sent as {record.slug!r}",
        f"schema: {record.source}" + (f", fetched {record.fetched_at}" if record.fetched_at else ""),
        "",
    ]
    for row in rows:
        lines.append(
            "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]])
        )
    return "\n".join(line.rstrip() for line in lines)


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="The image models: their inputs as the API describes them.", no_args_is_help=True
    )
    app.add_typer(models_app, name="models")

    @models_app.command("show")
    def show_command(
        slug: Annotated[str, typer.Argument(help="The model's slug, either spelling (3.5 or 3-5).")],
        api_base: ApiBase = None,
        offline: Annotated[
            bool,
            typer.Option("--offline", metavar="", help="Ask nothing: the user cache or the built-in table."),
        ] = False,
        use_sandbox: Sandbox = False,
        time_scale: TimeScale = None,
        as_json: Annotated[
            bool, typer.Option("--json", metavar="", help="Print the record as JSON.")
        ] = False,
    ) -> None:
        """Show a model's inputs, defaults and ranges as the API's model endpoint states them (and cache them
        for offline dry runs). Asking the API needs EACHLABS_API_KEY, as a run does (or --sandbox)."""
        from promptgrid.runs.api import api_for_run, require_key_unless_sandbox
        from promptgrid.settings import read_api_settings

        api = api_options(api_base, sandbox=use_sandbox, time_scale=time_scale)
        settings = read_api_settings(api_base)
        if offline:
            record = _offline_record(slug, settings.base_url)
        else:
            require_key_unless_sandbox(api, settings, "--sandbox")
            with api_for_run(api, lambda text: print(text, file=sys.stderr)) as sandbox_url:
                record = _ask(slug, sandbox_url or api_base)
        typer.echo(json.dumps(record.to_json(), indent=1) if as_json else describe_model(record))


def _ask(slug: str, api_base: str | None) -> ModelRecord:
    from promptgrid.api.resolve import resolve_for_run
    from promptgrid.models.records import UserCache, builtin_record
    from promptgrid.settings import read_api_settings

    base = read_api_settings(api_base).base_url
    resolution = asyncio.run(resolve_for_run(base, [slug], [UserCache(base).load, builtin_record]))
    if resolution.missing:
        raise InvalidInput([f"model {slug!r}: {reason}" for reason in resolution.missing.values()])
    for note in resolution.notes:
        print(f"model {note}", file=sys.stderr)
    return next(iter(resolution.models.values()))


def _offline_record(slug: str, base_url: str) -> ModelRecord:
    from promptgrid.models.records import UserCache, builtin_record

    record = UserCache(base_url).load(slug) or builtin_record(slug)
    if record is None:
        raise InvalidInput(
            [f"model {slug!r}: neither cached from {base_url} nor built in; ask without --offline"]
        )
    return record
