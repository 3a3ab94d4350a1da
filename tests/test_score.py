"""The scoring stage on a recorded sweep: weightless metrics for every image, incremental and resumable
passes, near-duplicates and seed diversity, and scores reaching backfill, export, notebooks and the report."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from itertools import product

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.engine.selection import select_rows
from promptgrid.errors import InvalidInput
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.notebook.frames import read_manifest as read_frame
from promptgrid.output.keys import image_key
from promptgrid.output.lease import OutputLease, lease_name
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.scores import read_scores, score_part_keys, with_scores
from promptgrid.output.sinks import open_sink
from promptgrid.report.build import write_report
from promptgrid.score.metrics import PIXEL_METRICS, ScoreItem, pixel_metrics
from promptgrid.score.stage import score_output, scorers_for
from promptgrid.types import JobOutcome, JobStatus
from tests.support.exports import load_hf
from tests.support.report_run import T0, make_job

PROMPTS = ("a red fox in snow", "a lighthouse at dusk")
CFGS = (2.0, 4.5)
STEPS = (20, 35)
SEEDS = (1, 2)
FAILED = 5  # this job failed: no image, no score


def noise(seed: int, amount: float, size: int = 64) -> Image.Image:
    """Grey noise around mid-grey: the more `amount`, the sharper (higher Laplacian variance)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(128 + rng.normal(0, amount, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def record_sweep(sink, failed: int = FAILED) -> dict[str, tuple]:
    """2 prompts x 2 cfg x 2 steps x 2 seeds; noise grows with cfg; the lighthouse's two seeds give the
    very same image (near-duplicates, no seed diversity). Returns job id -> (prompt, cfg, steps, seed)."""
    jobs = {}
    with ManifestWriter(sink, run_id="run-1", spec_hash="spec-1") as writer:
        for index, (prompt, cfg, steps, seed) in enumerate(product(PROMPTS, CFGS, STEPS, SEEDS)):
            job = make_job(f"job-{index:03d}", prompt, cfg, steps, seed)
            times = {"queued_at": T0, "submitted_at": T0, "completed_at": T0 + timedelta(seconds=5 + index)}
            jobs[job.job_id] = (prompt, cfg, steps, seed)
            if index == failed:
                writer.add(
                    job, JobOutcome(job.job_id, JobStatus.FAILED, "PROVIDER_REJECTED", "no", **times), None
                )
                continue
            variant = index if prompt == PROMPTS[0] else index - seed  # the lighthouse ignores its seed
            data = png(noise(variant, cfg * 10))
            uri = sink.put_bytes(image_key(job, "png"), data, "image/png")
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, width=64, height=64, predict_time_s=4.0,
                sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), **times,
            )  # fmt: skip
            writer.add(job, outcome, uri)
    return jobs


@pytest.fixture
def output(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    record_sweep(sink)
    return sink


def test_the_weightless_metrics_follow_their_formulas():
    def item(image: Image.Image) -> ScoreItem:
        return ScoreItem("j", 0, "s", "p", png(image), image)

    flat = pixel_metrics(item(Image.new("RGB", (32, 32), (128, 128, 128))))
    assert flat["sharpness"] == 0 and flat["entropy"] == 0 and flat["contrast"] == 0
    assert flat["colourfulness"] == 0 and flat["brightness"] == pytest.approx(128 / 255, abs=1e-3)
    red = pixel_metrics(item(Image.new("RGB", (32, 32), (255, 0, 0))))
    assert red["colourfulness"] == pytest.approx(0.3 * np.hypot(255, 127.5))  # M3 of pure red
    halves = np.zeros((32, 32, 3), np.uint8)
    halves[:, 16:] = 255
    split = pixel_metrics(item(Image.fromarray(halves)))
    assert split["entropy"] == pytest.approx(1.0) and split["contrast"] == pytest.approx(0.5)
    assert pixel_metrics(item(noise(1, 40)))["sharpness"] > pixel_metrics(item(noise(1, 10)))["sharpness"] > 0
    assert flat["bytes_per_pixel"] == len(png(Image.new("RGB", (32, 32), (128, 128, 128)))) / 1024


def test_every_image_gets_the_weightless_metrics_and_a_second_pass_scores_nothing(output):
    first = score_output(output)
    assert first.scored == {"pixels": 15} and first.already == 0 and not first.unreadable
    scores = read_scores(output).to_pylist()
    assert len(scores) == 15
    for row in scores:
        assert all(isinstance(row[name], float) for name in PIXEL_METRICS), row
        assert row["near_dup_group"] is not None and "phash" not in row
    parts = score_part_keys(output)

    second = score_output(output)
    assert second.total == 0 and second.already == 15 and not second.sets_written
    assert score_part_keys(output) == parts


def test_a_new_image_is_scored_alone_and_an_interrupted_pass_keeps_its_batches(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    record_sweep(sink)
    batches = []

    def stop_after_two() -> None:
        if len(batches) == 2:
            raise KeyboardInterrupt
        batches.append(1)

    with pytest.raises(KeyboardInterrupt):
        score_output(sink, batch_images=4, check=stop_after_two)
    assert read_scores(sink).num_rows == 8  # two batches of four, stored before the stop
    assert score_output(sink).scored == {"pixels": 7}

    job = make_job("job-005", PROMPTS[0], CFGS[1], STEPS[0], SEEDS[1])  # the failed job, now a success
    uri = sink.put_bytes(image_key(job, "png"), png(noise(99, 30)), "image/png")
    with ManifestWriter(sink, run_id="run-2", spec_hash="spec-1") as writer:
        done = T0 + timedelta(hours=1)
        outcome = JobOutcome(job.job_id, JobStatus.SUCCESS, width=64, height=64, completed_at=done)
        writer.add(job, outcome, uri)
    again = score_output(sink)
    assert again.scored == {"pixels": 1} and again.already == 15 and again.sets_written


def test_near_duplicates_and_seed_diversity(output):
    score_output(output)
    rows = {row["job_id"]: row for row in with_scores(read_manifest(output), output).to_pylist()}
    fox = [row for row in rows.values() if row["prompt"] == PROMPTS[0] and row["status"] == "success"]
    lighthouse = [row for row in rows.values() if row["prompt"] == PROMPTS[1]]
    # Every lighthouse cell holds one image twice: a group of two, the first ranked 0, no diversity.
    assert all(row["near_dup_size"] == 2 and row["seed_diversity"] == 0 for row in lighthouse)
    assert sorted(row["near_dup_rank"] for row in lighthouse) == [0] * 4 + [1] * 4
    assert len({row["near_dup_group"] for row in lighthouse}) == 4
    # Independent noise: no near-duplicates, about half the 64 hash bits differ between seeds.
    assert all(row["near_dup_size"] == 1 and row["near_dup_rank"] == 0 for row in fox)
    assert all(15 < row["seed_diversity"] < 50 for row in fox if row["job_id"] != "job-004")
    assert rows["job-004"]["seed_diversity"] is None  # its cell's other seed failed
    assert rows["job-005"]["sharpness"] is None  # failed: nothing to score


def test_an_unknown_metric_is_refused_with_the_names_allowed():
    with pytest.raises(InvalidInput, match="'sharpnes' is not a metric; choose from: .*sharpness"):
        scorers_for(["sharpnes"])
    assert scorers_for(["sharpness", "clip_score", "entropy"]) == ["pixels", "clip"]


def test_the_command_scores_once_and_refuses_a_held_output(output):
    first = CliRunner().invoke(app, ["score", output.root])
    assert first.exit_code == 0, first.output
    assert "scored 15 images (15 by pixels); 0 already scored" in first.output
    second = CliRunner().invoke(app, ["score", output.root])
    assert "scored 0 images (nothing new); 15 already scored" in second.output
    with OutputLease(output, lease_name(), "another-run") as lease:
        lease.take()
        held = CliRunner().invoke(app, ["score", output.root])
    assert held.exit_code != 0 and "in use by run another-run" in str(held.exception)


def test_score_columns_filter_backfill_export_and_notebook_rows(output, tmp_path):
    score_output(output)
    scored = with_scores(read_manifest(output), output)
    sharpness = sorted(v for v in scored["sharpness"].to_pylist() if v is not None)
    threshold = sharpness[len(sharpness) // 2]
    sharp = {row["job_id"] for row in scored.to_pylist() if (row["sharpness"] or 0) > threshold}
    assert 0 < len(sharp) < 15

    picked = select_rows(scored, ["success"], f"sharpness > {threshold}")
    assert set(picked["job_id"].to_pylist()) == sharp

    export_output(ExportOptions(output.root, str(tmp_path / "hf"), "hf", where=f"sharpness > {threshold}"))
    assert {row["job_id"] for row in load_hf(tmp_path / "hf", decode=False)} == sharp
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "## Scores" in card and "| `sharpness` | 15 |" in card
    assert "`sharpness`: " not in card.split("## Scores")[0]  # not counted as a parameter

    frame = read_frame(output.root, scores=True)
    by_job = {row["job_id"]: row["sharpness"] for row in scored.to_pylist()}
    assert frame.loc[frame["job_id"] == "job-000", "sharpness"].iloc[0] == pytest.approx(by_job["job-000"])
    assert "sharpness" not in read_frame(output.root).columns


def test_the_report_draws_a_chart_per_numeric_axis_and_a_heatmap_for_two(output):
    root = output.path
    write_report(output, sheets=False)
    assert "Scores by setting" not in (root / "report/index.html").read_text(encoding="utf-8")

    score_output(output)
    write_report(output, sheets=False)
    page = (root / "report/index.html").read_text(encoding="utf-8")
    charts = ["charts/axis-cfg.png", "charts/axis-steps.png", "charts/heatmap-cfg-steps.png"]
    for chart in charts:
        assert f'src="{chart}"' in page
        with Image.open(root / "report" / chart) as image:
            assert image.format == "PNG" and image.width > 600
    assert page.count('class="tile"') >= 2 * 3  # best and worst of each metric
    drawn = {chart: (root / "report" / chart).stat().st_mtime_ns for chart in charts}
    write_report(output, sheets=False)
    assert {chart: (root / "report" / chart).stat().st_mtime_ns for chart in charts} == drawn


def test_a_spec_lists_its_scorers_and_a_misspelt_one_stops_it_before_anything_is_sent(tmp_path):
    from promptgrid.notebook.specs import load_spec

    base = {"name": "s", "model": "stable-diffusion-3-5-large", "template": "a fox", "output": str(tmp_path)}
    assert load_spec({**base, "score": ["pixels", "clip"]}).score == ("pixels", "clip")
    assert load_spec(base).score == ()
    with pytest.raises(InvalidInput, match="score"):
        load_spec({**base, "score": ["sharpnes"]})
