"""A real sandbox sweep (the generate flow on Prefect's test server) scored by `promptgrid score`, charted
in its report and exported by a score column: the issue's "done when", end to end."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.flows.generate import generate
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.scores import with_scores
from promptgrid.output.sinks import open_sink
from promptgrid.sandbox.server import SandboxConfig, running_sandbox
from tests.support.exports import load_hf
from tests.support.sandbox import TEST_TIME_SCALE

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
]

KEY = "pg-score-key-5c20"
WEIGHTLESS = ("sharpness", "colourfulness", "brightness", "contrast", "entropy", "bytes_per_pixel")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, prefect_harness) -> Iterator[Path]:
    """2 prompts x 2 cfg x 2 steps x 2 seeds = 16 jobs on the sandbox, a few rejected."""
    folder = tmp_path_factory.mktemp("score-sweep")
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: score-test\nmodel: stable-diffusion-3-5-large\n"
        "template: 'a {subject} at dusk'\ninputs: {output_format: webp, aspect_ratio: '1:1'}\n"
        "sweep: {subject: [fox, lighthouse], cfg: [2.5, 5.0], steps: [20, 30]}\nseeds: [1, 2]\n"
        f"output: {folder / 'out'}\n",
        encoding="utf-8",
    )
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE, api_key=KEY, error_rate=0.15, seed=11,
        error_codes=(("PROVIDER_REJECTED", False),),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, running_sandbox(config) as sandbox:
        patch.setenv("EACHLABS_API_KEY", KEY)
        params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
        state = asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
        summary = state.result(raise_on_failure=False)
    assert summary.succeeded > 8, summary
    yield folder / "out"
    gc.collect()


def test_score_report_and_export_of_a_sandbox_sweep(sweep, tmp_path):
    sink = open_sink(str(sweep))
    first = CliRunner().invoke(app, ["score", str(sweep)])
    assert first.exit_code == 0, first.output
    rows = with_scores(read_manifest(sink), sink).to_pylist()
    images = [row for row in rows if row["status"] == "success"]
    assert f"scored {len(images)} images" in first.output
    for row in images:
        assert sum(isinstance(row[name], float) for name in WEIGHTLESS) >= 5, row
        assert row["near_dup_group"] is not None
    assert all(row["sharpness"] is None for row in rows if row["status"] != "success")

    second = CliRunner().invoke(app, ["score", str(sweep)])
    assert f"scored 0 images (nothing new); {len(images)} already scored" in second.output

    assert CliRunner().invoke(app, ["report", str(sweep), "--no-sheets"]).exit_code == 0
    page = (sweep / "report" / "index.html").read_text(encoding="utf-8")
    for chart in ("charts/axis-cfg.png", "charts/axis-steps.png", "charts/heatmap-cfg-steps.png"):
        assert f'src="{chart}"' in page
        with Image.open(sweep / "report" / chart) as drawn:
            assert drawn.format == "PNG"

    values = sorted(row["entropy"] for row in images)
    threshold = values[len(values) // 2]
    wanted = {row["job_id"] for row in images if row["entropy"] > threshold}
    assert wanted and len(wanted) < len(images)
    dest = tmp_path / "hf"
    exported = CliRunner().invoke(
        app,
        [
            *("export", str(sweep), "--format", "hf", "--to", str(dest), "--include-sandbox"),
            *("--where", f"entropy > {threshold}"),
        ],
    )
    assert exported.exit_code == 0, exported.output
    assert {row["job_id"] for row in load_hf(dest, decode=False)} == wanted


def test_a_spec_that_lists_scorers_has_its_images_scored_as_the_run_stores_them(tmp_path, prefect_harness):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: scored-run\nmodel: stable-diffusion-3-5-large\ntemplate: 'a {thing} at noon'\n"
        "sweep: {thing: [red kite, blue door], cfg: [2.5, 5.0]}\nseeds: [1]\nscore: [pixels]\n"
        f"output: {tmp_path / 'out'}\n",
        encoding="utf-8",
    )
    with (
        pytest.MonkeyPatch.context() as patch,
        running_sandbox(SandboxConfig(time_scale=TEST_TIME_SCALE, api_key=KEY)) as sandbox,
    ):
        patch.setenv("EACHLABS_API_KEY", KEY)
        params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
        summary = asyncio.run(generate(spec_path=str(spec), return_state=True, **params)).result()
    assert summary.succeeded == 4
    rows = with_scores(read_manifest(open_sink(str(tmp_path / "out"))), open_sink(str(tmp_path / "out")))
    scored = rows.to_pylist()
    assert len(scored) == 4 and all(isinstance(row["sharpness"], float) for row in scored), scored
    assert CliRunner().invoke(app, ["score", str(tmp_path / "out")]).output.count("scored 0 images") == 1
