"""Template variables in the report: on an axis like cfg, one grid per template, grids grouped by a column."""

from __future__ import annotations

import io
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import LocalSink
from promptgrid.report.build import SHEETS_PREFIX, sheet_key, write_report
from promptgrid.report.layout import build_grids
from promptgrid.spec.expand import iter_job_batches
from promptgrid.spec.load import load_spec
from promptgrid.types import Job, JobOutcome, JobStatus
from tests.support.report_run import T0, ReportPage, colour_centre, colour_for, png_bytes

SPEC = """\
model: stable-diffusion-3-5-large
template: "a photo of {subject} in {setting}, {lighting}"
sweep:
  subject: [a fox, an owl, a teapot]
  setting: [a forest, a street]
  lighting: [dusk, noon]
seeds: [1, 2]
"""


@pytest.fixture
def run(tmp_path: Path) -> tuple[LocalSink, list[Job], dict[str, tuple[int, int, int]]]:
    """The spec's 24 jobs, each a success with an image of its own colour, in a real manifest."""
    (tmp_path / "spec.yaml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    jobs = [job for batch in iter_job_batches(load_spec(tmp_path / "spec.yaml")) for job in batch]
    sink, colours = LocalSink(tmp_path / "out"), {}
    with ManifestWriter(sink, run_id="run-1", spec_hash="spec-1") as writer:
        for index, job in enumerate(jobs):
            colours[job.job_id] = colour_for(index % 36)
            uri = sink.put_bytes(image_key(job, "png"), png_bytes(colours[job.job_id]), "image/png")
            at = T0 + timedelta(seconds=index)
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, attempts=1, api_requests=2, width=96, height=96,
                queued_at=at, submitted_at=at, completed_at=at + timedelta(seconds=5),
            )  # fmt: skip
            writer.add(job, outcome, uri)
    return sink, jobs, colours


def test_a_variable_on_an_axis_makes_one_grid_of_the_others(run) -> None:
    sink, jobs, _ = run
    grids = build_grids(read_manifest(sink).to_pylist(), across="subject", down="setting")
    assert [grid.prompt for grid in grids] == [
        "a photo of {subject} in {setting}, dusk",
        "a photo of {subject} in {setting}, noon",
    ]
    for grid in grids:
        assert grid.across_values == ["a fox", "a teapot", "an owl"]
        assert grid.down_values == ["a forest", "a street"]
        assert grid.variant_params == ["seed"]
        for subject in grid.across_values:
            for setting in grid.down_values:
                cell = grid.cell(subject, setting)
                assert [row["seed"] for row in cell] == [1, 2]
                assert {row["prompt"] for row in cell} == {
                    grid.prompt.format(subject=subject, setting=setting)
                }


def test_without_a_variable_on_an_axis_grids_stay_one_per_prompt(run) -> None:
    sink, _, _ = run
    grids = build_grids(read_manifest(sink).to_pylist())
    assert len(grids) == 12 and all(grid.variant_params == ["seed"] for grid in grids)
    assert grids[0].prompt == "a photo of a fox in a forest, dusk"


def test_the_report_command_draws_the_variable_as_an_axis_on_pages_and_sheets(run) -> None:
    sink, jobs, colours = run
    result = CliRunner().invoke(app, ["report", sink.root, "--across", "subject", "--down", "setting"])
    assert result.exit_code == 0, result.output
    page = ReportPage((sink.path / "report" / "index.html").read_text(encoding="utf-8"))
    first_table = page.headers[page.headers.index("subject a fox") - 1 :][:6]
    assert first_table == [
        "setting ↓ / subject →", "subject a fox", "subject a teapot", "subject an owl",
        "setting a forest", "setting a street",
    ]  # fmt: skip
    grid = build_grids(read_manifest(sink).to_pylist(), across="subject", down="setting")[0]
    with Image.open(io.BytesIO(sink.get_bytes(sheet_key(grid)))) as sheet:
        centres = {row["job_id"]: colour_centre(sheet, colours[row["job_id"]]) for row in grid.rows()}
    rows = {row["job_id"]: row for row in grid.rows()}
    order = {name: sorted({row[name] for row in rows.values()}) for name in ("subject", "setting")}
    for a in rows.values():
        for b in rows.values():
            (ax, ay), (bx, by) = centres[a["job_id"]], centres[b["job_id"]]
            if order["subject"].index(a["subject"]) < order["subject"].index(b["subject"]):
                assert ax < bx
            if order["setting"].index(a["setting"]) < order["setting"].index(b["setting"]):
                assert ay < by
    assert len([key for key in sink.list_keys(SHEETS_PREFIX) if key.endswith(".png")]) == 2


def test_grids_may_be_grouped_by_any_column(run) -> None:
    sink, _, _ = run
    rows = read_manifest(sink).to_pylist()
    by_setting = build_grids(rows, across="subject", group_by=["setting"])
    assert [grid.prompt for grid in by_setting] == ["setting a forest", "setting a street"]
    assert by_setting[0].down == "lighting"  # the variables left pick the other axis, as inputs do
    assert by_setting[0].variant_params == ["seed"]
    by_template = build_grids(rows, across="lighting", down="subject", group_by=["template"])
    assert len(by_template) == 1 and by_template[0].variant_params == ["setting", "seed"]


def test_an_unknown_or_conflicting_grouping_is_refused(run) -> None:
    sink, _, _ = run
    with pytest.raises(InvalidInput, match="--group-by 'mood' is not a manifest column"):
        write_report(sink, group_by=["mood"])
    with pytest.raises(InvalidInput, match="--group-by 'subject' is also an axis"):
        write_report(sink, across="subject", group_by=["subject"])
