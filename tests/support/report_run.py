"""What the report tests share: a recorded run (real manifest, Pillow-made images) and page/pixel readers."""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from itertools import product

import numpy as np
from PIL import Image, ImageStat

from promptgrid.output.keys import image_key
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks.base import Sink
from promptgrid.types import Job, JobOutcome, JobStatus

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


def colour_centre(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 14
) -> tuple[float, float]:
    """The centroid of the pixels near a colour; fails when fewer than a small tile's worth are found."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    near = (np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=2)
    ys, xs = np.nonzero(near)
    assert len(xs) > 400, f"colour {colour} covers only {len(xs)} pixels"
    return float(xs.mean()), float(ys.mean())


def colour_corner(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 14
) -> tuple[float, float]:
    """The top-left corner of the pixels near a colour: where a tile starts, even while a browser has
    painted only part of its image (a centroid would move with the part painted)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    near = (np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=2)
    ys, xs = np.nonzero(near)
    assert len(xs) > 400, f"colour {colour} covers only {len(xs)} pixels"
    return float(xs.min()), float(ys.min())


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
