"""The HTML report and contact sheets, built from a real manifest and real images in a local folder or S3."""

from __future__ import annotations

import colorsys
import io
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from itertools import product
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.types import Job, JobOutcome, JobStatus
from tasks.contact_sheet import FAILURE_FILL, PAD
from tasks.keys import image_key
from tasks.manifest import MANIFEST_SCHEMA, ManifestWriter, read_manifest
from tasks.report import render_report, report_url, write_report
from tasks.report_grid import build_grids
from tasks.report_summary import summarize
from tasks.storage import LocalSink, Sink, open_sink

PROMPTS = (
    "a red fox in snow",
    'a <script>alert("x")</script> & “quotes” — ünïcode 🦊',
    "a lighthouse at dusk",
)
CFGS = (2.0, 4.5, 7.0)
STEPS = (20, 35)
SEEDS = (1, 2)
TILE_PX = 160  # the contact sheet's default tile size
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Index of a job in product(PROMPTS, CFGS, STEPS, SEEDS) -> (status, error_code, error_message).
FAILURES = {
    3: (JobStatus.FAILED, "PROVIDER_REJECTED", "content filter: <img src=x onerror=alert(1)>"),
    8: (JobStatus.TIMED_OUT, "EXECUTION_TIMEOUT", "no result within 300 s"),
    17: (JobStatus.FAILED, "PROVIDER_SERVER_ERROR", "upstream said \"busy\" & 'retry later'"),
    30: (JobStatus.CANCELLED, "CANCELLED", "cancelled by the user"),
}


@dataclass(frozen=True)
class RecordedJob:
    """What the test put into the output for one job, to check the report against."""

    job_id: str
    prompt: str
    cfg: float
    steps: int
    seed: int
    status: JobStatus
    colour: tuple[int, int, int] | None
    error_code: str | None = None
    error_message: str | None = None
    image_key: str | None = None


def colour_for(index: int) -> tuple[int, int, int]:
    """Twelve hues 30° apart per prompt, each prompt a different brightness: every image tells apart."""
    value = (1.0, 0.6, 0.35)[min(2, index // 12)]
    red, green, blue = colorsys.hsv_to_rgb((index % 12) / 12, 1.0, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def record_run(
    sink: Sink,
    *,
    failures: dict[int, tuple[JobStatus, str, str]] = FAILURES,
    prompts: tuple[str, ...] = PROMPTS,
    cost_usd: float | None = None,
) -> list[RecordedJob]:
    """A finished 3-prompt × 3-cfg × 2-steps × 2-seed run: Pillow-made images and a real manifest."""
    recorded = []
    with ManifestWriter(sink, run_id="run-1", spec_hash="spec-1") as writer:
        for index, (prompt, cfg, steps, seed) in enumerate(product(prompts, CFGS, STEPS, SEEDS)):
            job = make_job(f"job-{index:03d}", prompt, cfg, steps, seed)
            times = {
                "queued_at": T0 + timedelta(seconds=index),
                "submitted_at": T0 + timedelta(seconds=index),
            }
            times["completed_at"] = times["submitted_at"] + timedelta(seconds=6 + index % 5)
            if index in failures:
                status, code, message = failures[index]
                outcome = JobOutcome(job.job_id, status, code, message, attempts=1, api_requests=3, **times)
                writer.add(job, outcome, None)
                recorded.append(
                    RecordedJob(job.job_id, prompt, cfg, steps, seed, status, None, code, message)
                )
                continue
            colour = colour_for(index)
            key = image_key(job, "png")
            uri = sink.put_bytes(key, png_bytes(colour), "image/png")
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, attempts=1, api_requests=4, width=96, height=96,
                predict_time_s=5.0 + index % 5, cost_usd=cost_usd, **times,
            )  # fmt: skip
            writer.add(job, outcome, uri)
            recorded.append(
                RecordedJob(job.job_id, prompt, cfg, steps, seed, JobStatus.SUCCESS, colour, image_key=key)
            )
    return recorded


def make_job(job_id: str, prompt: str, cfg: float, steps: int, seed: int) -> Job:
    inputs = {"prompt": prompt, "cfg": cfg, "steps": steps, "seed": seed, "aspect_ratio": "1:1"}
    return Job(job_id=job_id, model="stable-diffusion-3-5-large", inputs=inputs)


def record_retry_success(sink: Sink, failed: RecordedJob, colour: tuple[int, int, int]) -> None:
    """A later run that got the image a failed job had missed."""
    job = make_job(failed.job_id, failed.prompt, failed.cfg, failed.steps, failed.seed)
    uri = sink.put_bytes(image_key(job, "png"), png_bytes(colour), "image/png")
    done = T0 + timedelta(hours=1)
    outcome = JobOutcome(
        job.job_id, JobStatus.SUCCESS, api_requests=4, width=96, height=96,
        queued_at=done, submitted_at=done, completed_at=done + timedelta(seconds=7),
    )  # fmt: skip
    with ManifestWriter(sink, run_id="run-2", spec_hash="spec-1") as writer:
        writer.add(job, outcome, uri)


@dataclass
class Figure:
    """One variant as the page shows it: a linked thumbnail, or a failure box with its text."""

    kind: str
    title: str
    text: str = ""
    src: str | None = None
    href: str | None = None
    loading: str | None = None


class ReportPage(HTMLParser):
    """Collects the figures, table headers and tag names of one report page."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.figures: list[Figure] = []
        self.headers: list[str] = []
        self.tags: set[str] = set()
        self._href: str | None = None
        self._in_header = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.add(tag)
        if tag == "figure":
            self.figures.append(Figure(kind=attributes.get("class", ""), title=attributes.get("title") or ""))
        elif tag == "a":
            self._href = attributes.get("href")
        elif tag == "img" and self.figures:
            figure = self.figures[-1]
            figure.src, figure.href, figure.loading = attributes["src"], self._href, attributes.get("loading")
            figure.title = attributes.get("title") or ""
        elif tag == "th":
            self._in_header = True
            self.headers.append("")

    def handle_endtag(self, tag):
        self._in_header = self._in_header and tag != "th"

    def handle_data(self, data):
        if self._in_header:
            self.headers[-1] += data
        elif self.figures:
            self.figures[-1].text += data

    def figure_for(self, job_id: str) -> Figure:
        matches = [figure for figure in self.figures if f"job: {job_id}\n" in figure.title + "\n"]
        assert len(matches) == 1, f"{job_id} appears {len(matches)} times"
        return matches[0]


def mean_colour(data: bytes) -> tuple[int, ...]:
    with Image.open(io.BytesIO(data)) as image:
        return tuple(round(channel) for channel in ImageStat.Stat(image.convert("RGB")).mean)


def close(colour: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


@pytest.fixture
def local_run(tmp_path: Path) -> tuple[LocalSink, list[RecordedJob]]:
    sink = LocalSink(tmp_path / "out")
    return sink, record_run(sink)


def test_report_command_shows_every_image_and_names_every_failure(local_run):
    sink, recorded = local_run
    result = CliRunner().invoke(app, ["report", sink.root])
    assert result.exit_code == 0, result.output
    index = sink.path / "report" / "index.html"
    assert result.output.strip() == str(index) and report_url(sink) == index.as_uri()
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


def test_unknown_axis_is_refused_with_exit_code_2(local_run):
    sink, _ = local_run
    with pytest.raises(InvalidInput, match="'sampler' is not a parameter"):
        write_report(sink, across="sampler")
    answer = subprocess.run(
        [sys.executable, "-m", "promptgrid.cli", "report", sink.root, "--down", "sampler"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert "--down 'sampler' is not a parameter" in answer.stderr


def test_report_of_an_output_without_manifest_is_refused(tmp_path: Path):
    answer = subprocess.run(
        [sys.executable, "-m", "promptgrid.cli", "report", str(tmp_path / "nothing-here")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
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
    summary = summarize(read_manifest(sink).to_pylist(), price_per_image=0.065)
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
    summary = summarize(read_manifest(sink).to_pylist(), price_per_image=0.065)
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


def colour_centre(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 14
) -> tuple[float, float]:
    """The centroid of the pixels near a colour; fails when fewer than a small tile's worth are found."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    near = (np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=2)
    ys, xs = np.nonzero(near)
    assert len(xs) > 400, f"colour {colour} covers only {len(xs)} pixels"
    return float(xs.mean()), float(ys.mean())


def assert_laid_out(jobs: list[RecordedJob], centres: dict[str, tuple[float, float]]) -> None:
    """cfg grows left to right, steps top to bottom, and within a cell seed 1 comes before seed 2."""
    shown = [job for job in jobs if job.job_id in centres]
    for a, b in product(shown, shown):
        (ax, ay), (bx, by) = centres[a.job_id], centres[b.job_id]
        if a.cfg < b.cfg:
            assert ax < bx, (a, b)
        if a.steps < b.steps:
            assert ay < by, (a, b)
        if (a.cfg, a.steps) == (b.cfg, b.steps) and a.seed < b.seed:
            assert ax < bx and abs(ay - by) < 2, (a, b)


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
