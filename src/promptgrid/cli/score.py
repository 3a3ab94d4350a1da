"""The `promptgrid score` command: score an output's stored images, holding its lease while it writes."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score_command(
        output: Annotated[
            str, typer.Argument(help="The run's output: a local folder or s3://bucket/prefix.")
        ],
        metric: Annotated[
            list[str] | None,
            typer.Option(
                help="A metric or scorer to compute (repeat for more): pixels (the default: sharpness, "
                "colourfulness, brightness, contrast, entropy, bytes_per_pixel, near-duplicates, seed "
                "diversity), clip (clip_score), aesthetic; or any of their metric names."
            ),
        ] = None,
        clip_model: Annotated[
            str | None,
            typer.Option(help="CLIP weights: a folder or a Hugging Face repository id (docs/scores.md)."),
        ] = None,
        aesthetic_model: Annotated[
            str | None,
            typer.Option(
                help="Aesthetic head (aesthetic.onnx): a folder or repository id; default beside CLIP."
            ),
        ] = None,
        wait: Annotated[
            bool, typer.Option(help="Wait for a run holding the output instead of exiting 2.")
        ] = False,
    ) -> None:
        """Score every image in OUTPUT not yet scored; results go to OUTPUT/scores/*.parquet."""
        from promptgrid.errors import InvalidInput
        from promptgrid.output.lease import OutputLease, holding, lease_name
        from promptgrid.output.manifest.read import part_keys
        from promptgrid.output.sinks import open_sink
        from promptgrid.score.stage import Weights, score_output, scorers_for
        from promptgrid.score.weights import DEFAULT_CLIP

        metrics = metric or ["pixels"]
        scorers_for(metrics)  # an unknown name stops here, before the lease is taken
        sink = open_sink(output)
        if not part_keys(sink):
            raise InvalidInput(
                [f"{output}: no manifest found (manifest/*.parquet); run `promptgrid run` first."]
            )
        weights = Weights(clip=clip_model or DEFAULT_CLIP, aesthetic=aesthetic_model)
        lease = OutputLease(sink, lease_name(), run_id=f"score-{secrets.token_hex(6)}")
        lease.take(wait=wait, on_wait=lambda message: typer.echo(message, err=True))
        with holding(lease):
            result = score_output(sink, metrics, weights=weights, check=lease.check)
        scored = ", ".join(f"{count} by {name}" for name, count in result.scored.items()) or "nothing new"
        typer.echo(f"scored {result.total} images ({scored}); {result.already} already scored")
        for problem in result.unreadable:
            typer.echo(f"  not scored: {problem}", err=True)
        typer.echo(f"{sink.root.rstrip('/')}/scores/")
