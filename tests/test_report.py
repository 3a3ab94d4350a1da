"""The HTML report and contact sheets, built from a real manifest and real images in a local folder or S3."""

from __future__ import annotations

import io
import urllib.parse
from itertools import product
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.rows import MANIFEST_SCHEMA
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.local import LocalSink
from promptgrid.report.build import render_report, report_url, write_report
from promptgrid.report.layout import build_grids
from promptgrid.report.sheets import FAILURE_FILL, PAD, draw_contact_sheet
from promptgrid.report.summary import summarize_rows
from promptgrid.types import JobStatus
from tests.support.processes import promptgrid
from tests.support.report_run import (
    CFGS,
    PROMPTS,
    SEEDS,
    STEPS,
    TILE_PX,
    RecordedJob,
    ReportPage,
    assert_laid_out,
    close,
    colour_centre,
    mean_colour,
    record_retry_success,
    record_run,
)


@pytest.fixture
def local_run(tmp_path: Path) -> tuple[LocalSink, list[RecordedJob]]:
    sink = LocalSink(tmp_path / "out")
    return sink, record_run(sink)


def test_report_command_shows_every_image_and_names_every_failure(local_run):
    sink, recorded = local_run
    result = CliRunner().invoke(app, ["report", sink.root])
    assert result.exit_code == 0, result.output
    index = sink.path / "report" / "index.html"
    assert result.stdout.strip() == str(index) and report_url(sink) == index.as_uri()
    page = ReportPage(index.read_text(encoding="utf-8"))
    for job in recorded:
        figure = page.figure_for(job.job_id)
        if job.status == JobStatus.SUCCESS:
            assert figure.kind == "ok" and figure.loading == "lazy"
            linked = (index.parent / urllib.parse.unquote(figure.href)).resolve()
            assert linked == sink.local_path(job.image_key)
            thumb = (index.parent / urllib.parse.unquote(figure.src)).read_bytes()
            assert close(mean_colour(thumb), job.colour)
        else:
            assert figure.kind == "failed" and figure.src is None
            assert job.status.value in figure.text
            assert job.error_code in figure.text and job.error_message in figure.text
    assert sorted(p.name for p in (index.parent / "thumbs").iterdir()) == sorted(
        f"{job.job_id}.webp" for job in recorded if job.status == JobStatus.SUCCESS
    )
    assert len(list((index.parent / "sheets").glob("*.png"))) == len(PROMPTS)


def test_hover_title_lists_the_jobs_parameters(local_run):
    sink, recorded = local_run
    page = ReportPage(Path(write_report(sink)).read_text(encoding="utf-8"))
    job = recorded[5]
    title = page.figure_for(job.job_id).title
    assert f"cfg: {job.cfg:g}" in title and f"steps: {job.steps}" in title and f"seed: {job.seed}" in title
    assert f"prompt: {job.prompt}" in title


def test_all_text_is_escaped(local_run):
    sink, _ = local_run
    html = Path(write_report(sink)).read_text(encoding="utf-8")
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "ünïcode 🦊" in html and "“quotes”" in html
    assert "script" not in ReportPage(html).tags


def test_axes_are_the_swept_parameters_and_flags_swap_them(local_run):
    sink, _ = local_run
    rows = read_manifest(sink).to_pylist()
    grids = build_grids(rows)
    assert [grid.prompt for grid in grids] == list(PROMPTS)
    assert {(grid.across, grid.down) for grid in grids} == {("cfg", "steps")}
    assert grids[0].across_values == list(CFGS) and grids[0].down_values == list(STEPS)
    assert all(len(grids[0].cell(cfg, steps)) == len(SEEDS) for cfg in CFGS for steps in STEPS)

    page = ReportPage(Path(write_report(sink, across="steps", down="cfg")).read_text(encoding="utf-8"))
    first_grid_headers = page.headers[page.headers.index("steps 20") - 1 :][:3]
    assert first_grid_headers == ["cfg ↓ / steps →", "steps 20", "steps 35"]


@pytest.mark.integration  # the installed command, in a process of its own
def test_unknown_axis_is_refused_with_exit_code_2(local_run):
    sink, _ = local_run
    with pytest.raises(InvalidInput, match="'sampler' is not a parameter"):
        write_report(sink, across="sampler")
    answer = promptgrid("report", sink.root, "--down", "sampler", timeout=60)
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert "--down 'sampler' is not a parameter" in answer.stderr


@pytest.mark.integration  # the installed command, in a process of its own
def test_report_of_an_output_without_manifest_is_refused(tmp_path: Path):
    answer = promptgrid("report", str(tmp_path / "nothing-here"), timeout=60)
    assert answer.returncode == 2 and "no manifest" in answer.stderr


def test_thumbnails_are_made_once_and_reused(local_run):
    sink, recorded = local_run
    first = render_report(sink, read_manifest(sink))
    thumb = sink.path / "report" / "thumbs" / f"{recorded[0].job_id}.webp"
    stamp = thumb.stat().st_mtime_ns
    second = render_report(sink, read_manifest(sink))
    successes = sum(job.status == JobStatus.SUCCESS for job in recorded)
    assert (first.thumbnails_made, second.thumbnails_made) == (successes, 0)
    assert thumb.stat().st_mtime_ns == stamp


def test_unchanged_grids_keep_their_contact_sheets(local_run):
    sink, recorded = local_run
    assert render_report(sink, read_manifest(sink)).sheets_drawn == len(PROMPTS)
    assert render_report(sink, read_manifest(sink)).sheets_drawn == 0

    failed = next(job for job in recorded if job.status != JobStatus.SUCCESS)
    record_retry_success(sink, failed, (10, 20, 30))
    third = render_report(sink, read_manifest(sink))
    assert (third.sheets_drawn, third.thumbnails_made) == (1, 1)
    page = ReportPage((sink.path / "report" / "index.html").read_text(encoding="utf-8"))
    assert page.figure_for(failed.job_id).kind == "ok"


def test_seed_can_be_made_an_axis(local_run):
    sink, _ = local_run
    grid = build_grids(read_manifest(sink).to_pylist(), across="seed")[0]
    assert (grid.across, grid.down, grid.variant_params) == ("seed", "cfg", ["steps"])
    assert grid.across_values == list(SEEDS)
    assert [row["steps"] for row in grid.cell(SEEDS[0], CFGS[0])] == list(STEPS)


def test_empty_manifest_gives_a_report_saying_so(tmp_path: Path):
    sink = LocalSink(tmp_path / "out")
    result = render_report(sink, MANIFEST_SCHEMA.empty_table())
    assert (result.pages, result.prompts) == (1, 0)
    assert "no jobs yet" in (sink.path / "report" / "index.html").read_text(encoding="utf-8")


def test_large_sweeps_are_split_into_pages(local_run):
    sink, recorded = local_run
    result = render_report(sink, read_manifest(sink), page_size=1)
    report = sink.path / "report"
    assert result.pages == 3 and {p.name for p in report.glob("*.html")} == {
        "index.html",
        "page-2.html",
        "page-3.html",
    }
    shown = set()
    for name in ("index.html", "page-2.html", "page-3.html"):
        page = ReportPage((report / name).read_text(encoding="utf-8"))
        shown |= {figure.title.rsplit("job: ", 1)[1] for figure in page.figures}
        assert all(figure.loading == "lazy" for figure in page.figures if figure.kind == "ok")
    assert shown == {job.job_id for job in recorded}
    assert 'href="page-3.html"' in (report / "index.html").read_text(encoding="utf-8")

    render_report(sink, read_manifest(sink), page_size=25)
    assert [p.name for p in report.glob("*.html")] == ["index.html"]  # stale pages removed


def test_summary_counts_latency_requests_and_cost(local_run):
    sink, recorded = local_run
    summary = summarize_rows(read_manifest(sink).to_pylist(), price_per_image=0.065)
    successes = sum(job.status == JobStatus.SUCCESS for job in recorded)
    assert summary.by_status == {"success": successes, "failed": 2, "timed_out": 1, "cancelled": 1}
    assert summary.requests_per_image == pytest.approx((4 * successes + 3 * 4) / successes)
    assert summary.cost_is_estimate and summary.cost_usd == pytest.approx(successes * 0.065)
    assert summary.latency_source == "predict_time_s" and len(summary.latencies_s) == successes
    assert summary.failures_by_code["PROVIDER_REJECTED"] == 1

    html = Path(write_report(sink, price_per_image=0.1)).read_text(encoding="utf-8")
    assert f"${successes * 0.1:.2f}" in html and "estimated" in html
    assert html.count("<rect") == 5  # predict times 5..9 s: five distinct values, five bars


def test_billed_cost_wins_over_the_estimate(tmp_path: Path):
    sink = LocalSink(tmp_path / "out")
    recorded = record_run(sink, cost_usd=0.05)
    summary = summarize_rows(read_manifest(sink).to_pylist(), price_per_image=0.065)
    successes = sum(job.status == JobStatus.SUCCESS for job in recorded)
    assert not summary.cost_is_estimate and summary.cost_usd == pytest.approx(successes * 0.05)


def test_success_whose_image_vanished_is_shown_as_missing_not_as_an_image(local_run):
    sink, recorded = local_run
    gone = recorded[0]
    sink.delete(gone.image_key)
    page = ReportPage(Path(write_report(sink)).read_text(encoding="utf-8"))
    figure = page.figure_for(gone.job_id)
    assert figure.kind == "failed" and figure.src is None
    assert "IMAGE_UNREADABLE" in figure.text and "FileNotFoundError" in figure.text


def test_contact_sheet_places_each_image_by_its_axis_values(local_run):
    sink, recorded = local_run
    write_report(sink)
    first_prompt = [job for job in recorded if job.prompt == PROMPTS[0]]
    sheets = sorted((sink.path / "report" / "sheets").glob("a-red-fox-in-snow-*.png"))
    assert len(sheets) == 1
    with Image.open(sheets[0]) as sheet:
        centres = {job.job_id: colour_centre(sheet, job.colour) for job in first_prompt if job.colour}
    assert_laid_out(first_prompt, centres)
    # Each failure is a box in its own tile, beside its cell's other seed: seed 1 left, seed 2 right.
    with Image.open(sheets[0]) as sheet:
        rgb = sheet.convert("RGB")
        for failed in (job for job in first_prompt if job.status != JobStatus.SUCCESS):
            other = next(
                j for j in first_prompt if (j.cfg, j.steps) == (failed.cfg, failed.steps) and j.colour
            )
            x, y = centres[other.job_id]
            step = (TILE_PX + PAD) * (1 if failed.seed > other.seed else -1)
            assert rgb.getpixel((round(x + step), round(y + TILE_PX // 4))) == FAILURE_FILL


def test_s3_report_uses_thumbnails_in_the_bucket_and_presigned_links(s3_output: str):
    sink = open_sink(s3_output)
    recorded = record_run(sink)
    uri = write_report(sink)
    assert uri == f"{s3_output}/report/index.html"
    page = ReportPage(sink.get_bytes("report/index.html").decode("utf-8"))
    job = next(job for job in recorded if job.status == JobStatus.SUCCESS)
    figure = page.figure_for(job.job_id)
    assert urllib.parse.urlsplit(figure.src).hostname == "127.0.0.1"
    with httpx.Client(timeout=10) as client:
        thumb = client.get(figure.src)
        full = client.get(figure.href)
        index = client.get(report_url(sink, expires_s=600))
    assert index.status_code == 200 and index.text == sink.get_bytes("report/index.html").decode("utf-8")
    assert thumb.status_code == 200 and close(mean_colour(thumb.content), job.colour)
    assert full.status_code == 200 and full.content == sink.get_bytes(job.image_key)
    assert sink.exists(f"report/thumbs/{job.job_id}.webp")
    assert len([key for key in sink.list_keys("report/sheets/") if key.endswith(".png")]) == len(PROMPTS)
    failed = next(job for job in recorded if job.status != JobStatus.SUCCESS)
    assert failed.error_message in page.figure_for(failed.job_id).text


@pytest.mark.parametrize(
    ("varying", "expected_axes", "expected_variants"),
    [
        ({}, (None, None), ["seed"]),
        ({"steps": [20, 35]}, ("steps", None), ["seed"]),
        (
            {"cfg": [2.0, 3.0], "steps": [20, 35], "aspect_ratio": ["1:1", "16:9"]},
            ("cfg", "steps"),
            ["aspect_ratio", "seed"],
        ),
    ],
)
def test_any_number_of_swept_parameters_gives_a_grid_and_a_sheet(varying, expected_axes, expected_variants):
    base = {"prompt": "p", "cfg": 3.5, "steps": 35, "aspect_ratio": "1:1", "status": "success", "seed": 1}
    combos = [dict(zip(varying, values, strict=True)) for values in product(*varying.values())] or [{}]
    rows = [{**base, **combo, "job_id": f"j{index}"} for index, combo in enumerate(combos)]
    (grid,) = build_grids(rows)
    assert (grid.across, grid.down) == expected_axes and grid.variant_params == expected_variants
    assert sorted(row["job_id"] for row in grid.rows()) == sorted(row["job_id"] for row in rows)
    tiles = {row["job_id"]: Image.new("RGB", (64, 64), (200, 30, 30)) for row in rows}
    with Image.open(io.BytesIO(draw_contact_sheet(grid, tiles))) as sheet:
        columns = len(grid.across_values) * grid.variants_per_cell()
        assert sheet.width >= columns * TILE_PX and sheet.height >= len(grid.down_values) * TILE_PX
        red = (np.abs(np.asarray(sheet.convert("RGB"), dtype=np.int16) - (200, 30, 30)) <= 2).all(axis=2)
        assert red.sum() == len(rows) * 64 * 64  # every tile drawn once, at its own size, none cut off
