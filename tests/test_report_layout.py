"""A report that stays: the chosen axes are kept for later reports, sheets of earlier layouts go, and the
tiles of one cell are told apart by their captions."""

from __future__ import annotations

import json
import logging
from itertools import product
from pathlib import Path

import pytest

from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks.local import LocalSink
from promptgrid.report.build import render_report, write_report
from promptgrid.report.fonts import font_chain
from promptgrid.report.layout import build_grids, cell_captions
from promptgrid.report.saved_layout import LAYOUT_KEY
from promptgrid.report.sheets import fit_caption
from promptgrid.types import JobStatus
from tests.support.report_run import (
    PROMPTS,
    SEEDS,
    RecordedJob,
    ReportPage,
    record_retry_success,
    record_run,
)


@pytest.fixture
def local_run(tmp_path: Path) -> tuple[LocalSink, list[RecordedJob]]:
    sink = LocalSink(tmp_path / "out")
    return sink, record_run(sink)


def corner(sink: LocalSink) -> str:
    """The first grid's corner heading: which parameter is down and which across."""
    page = ReportPage((sink.path / "report" / "index.html").read_text(encoding="utf-8"))
    return next(header for header in page.headers if "→" in header or "↓" in header)


def sheets(sink: LocalSink) -> list[str]:
    return sorted(path.name for path in (sink.path / "report" / "sheets").glob("*.png"))


def test_chosen_axes_are_kept_and_reused_by_a_later_report_that_names_none(local_run):
    sink, recorded = local_run
    render_report(sink, read_manifest(sink))
    assert corner(sink) == "steps ↓ / cfg →"  # the default: cfg across, steps down

    write_report(sink, across="steps", down="cfg")
    assert json.loads((sink.path / LAYOUT_KEY).read_text()) == {
        "across": "steps",
        "down": "cfg",
        "group_by": [],
    }

    # A later run adds a row and writes the report the way a run does: with no axes named.
    failed = next(job for job in recorded if job.status != JobStatus.SUCCESS)
    record_retry_success(sink, failed, (10, 20, 30))
    render_report(sink, read_manifest(sink))
    assert corner(sink) == "cfg ↓ / steps →"


def test_sheets_of_an_earlier_layout_are_removed(local_run):
    sink, _ = local_run
    write_report(sink)
    assert len(sheets(sink)) == len(PROMPTS)
    write_report(sink, group_by=["seed"], across="cfg", down="steps")  # one grid per seed, prompts mixed
    assert len(sheets(sink)) == len(SEEDS)
    state = json.loads((sink.path / "report" / "sheets" / "index.json").read_text())
    assert sorted(f"{slug}.png" for slug in state) == sheets(sink)


def test_a_kept_axis_the_manifest_no_longer_has_is_dropped_with_a_warning(local_run, caplog):
    sink, _ = local_run
    (sink.path / "report").mkdir(parents=True, exist_ok=True)
    (sink.path / LAYOUT_KEY).write_text(json.dumps({"across": "sampler", "down": "cfg", "group_by": []}))
    with caplog.at_level(logging.WARNING, logger="promptgrid.report"):
        render_report(sink, read_manifest(sink))
    assert corner(sink) == "cfg ↓ / steps →"  # cfg down as kept; across falls back to the default choice
    assert "sampler" in caplog.text and LAYOUT_KEY in caplog.text


def test_tiles_in_one_cell_have_captions_that_differ_even_when_cut_to_the_tile():
    # cfg across, steps down, and inside each cell every aspect ratio × output format × seed.
    variants = list(product(["1:1", "16:9"], ["webp", "png"], [1, 2]))
    rows = [
        {"job_id": f"j{n}", "prompt": "p", "cfg": 3.5, "steps": 28, "aspect_ratio": ratio,
         "output_format": fmt, "seed": seed, "status": "success"}
        for n, (ratio, fmt, seed) in enumerate(variants)
    ]  # fmt: skip
    rows.append({**rows[0], "job_id": "other", "cfg": 5.0, "steps": 40})
    (grid,) = build_grids(rows)
    cell = grid.cell(3.5, 28)
    assert len(cell) == len(variants)
    captions = cell_captions(cell, grid.variant_params)
    assert len(set(captions)) == len(variants)
    font = font_chain(13)
    for tile_px in (48, 100, 160):
        fitted = [fit_caption(caption, tile_px, font) for caption in captions]
        assert all(font.length(text) <= tile_px for text in fitted)
        if tile_px >= 100:
            assert len(set(fitted)) == len(variants), fitted


def test_a_cell_whose_variants_share_every_parameter_names_their_jobs():
    alike = [{"job_id": "aaaaaaaaaaaa1", "seed": 1}, {"job_id": "bbbbbbbbbbbb2", "seed": 1}]
    assert cell_captions(alike, ["seed"]) == ["job aaaaaaaaaa", "job bbbbbbbbbb"]
    assert cell_captions(alike[:1], ["seed"]) == ["seed 1"]  # a lone variant names all its parameters
