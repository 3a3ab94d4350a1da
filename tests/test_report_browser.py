"""The report as a browser draws it: headless Chromium screenshots the page, Pillow checks the grid in it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptgrid.output.sinks.local import LocalSink
from promptgrid.report.build import write_report
from promptgrid.types import JobStatus
from tests.support.report_run import PROMPTS, assert_laid_out, colour_corner, record_run
from tests.support.system import chromium_path

CHROMIUM = chromium_path()
pytestmark = [
    pytest.mark.integration,  # headless Chromium
    pytest.mark.needs("chromium"),
]

FAILURE_FILL = (253, 236, 234)  # .failure's background in the report's CSS
THUMB_CSS_PX = 160
GAP_CSS_PX = 6


def screenshot(page: Path, tmp_path: Path, size: tuple[int, int] = (1200, 1200)) -> Image.Image:
    """Chromium's rendering of a local page, offline: no network services, a throwaway profile."""
    target = tmp_path / "screenshot.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        # Lets lazy images in the viewport finish loading before the shot, without a wall-clock wait.
        "--virtual-time-budget=5000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={target}",
        f"--window-size={size[0]},{size[1]}",
        page.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=90, check=True)
    with Image.open(target) as shot:
        return shot.convert("RGB")


def test_browser_shows_the_first_prompts_grid_with_its_failures(tmp_path: Path):
    sink = LocalSink(tmp_path / "out")
    recorded = record_run(sink)
    # Tall enough that the first grid sits well inside the window, never on the edge a busy machine
    # may leave unpainted when the shot is taken.
    shot = screenshot(Path(write_report(sink)), tmp_path)
    assert shot.size == (1200, 1200)

    first_prompt = [job for job in recorded if job.prompt == PROMPTS[0]]
    corners = {job.job_id: colour_corner(shot, job.colour) for job in first_prompt if job.colour}
    assert_laid_out(first_prompt, corners)

    failures = [job for job in first_prompt if job.status != JobStatus.SUCCESS]
    assert failures
    pixels = np.asarray(shot, dtype=np.int16)
    for failed in failures:
        # The failure box fills the square its thumbnail would: beside the other seed of the same cell.
        other = next(j for j in first_prompt if (j.cfg, j.steps) == (failed.cfg, failed.steps) and j.colour)
        left, top = corners[other.job_id]
        left += (THUMB_CSS_PX + GAP_CSS_PX) * (1 if failed.seed > other.seed else -1)
        square = pixels[round(top) : round(top) + THUMB_CSS_PX, round(left) : round(left) + THUMB_CSS_PX]
        filled = (np.abs(square - np.array(FAILURE_FILL)) <= 3).all(axis=2).mean()
        # The fill covers all but the box's border and its few lines of text.
        where = f"({left:.0f}, {top:.0f})"
        assert filled > 0.6, f"no failure box for {failed.job_id} at {where}: {filled:.0%} filled"
