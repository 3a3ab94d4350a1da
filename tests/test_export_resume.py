"""An export killed with SIGKILL half-way through a shard, then run again: the destination never shows a
half shard as whole, and the second run resumes from the last finished shard."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import textwrap
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus
from tests.support.exports import check_hf, check_wds, expected_rows

pytestmark = pytest.mark.integration  # a process killed with SIGKILL

IMAGES = 120
ROWS_PER_PART = 20  # the export reports progress once per part read
OPTIONS = {"shard_bytes": 60_000, "batch_rows": 4}

# The child exports and kills itself, as a lost machine would, once three parts have been written out.
CHILD = """
import os, signal, sys
from promptgrid.export.exporter import ExportOptions, export_output

def on_progress(progress):
    if progress.examined >= {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

export_output(ExportOptions(sys.argv[1], sys.argv[2], sys.argv[3], **{options}), on_progress=on_progress)
"""


def record_images(sink) -> None:
    """IMAGES distinct 96 px PNGs of random blocks (~25 KB each), in parts of ROWS_PER_PART rows."""
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    rng = np.random.default_rng(5)
    with ManifestWriter(sink, run_id="r", spec_hash="h", rows_per_part=ROWS_PER_PART) as writer:
        for n in range(IMAGES):
            blocks = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(blocks).resize((96, 96), Image.Resampling.NEAREST).save(buffer, format="PNG")
            job = Job(f"j{n:04d}", "stable-diffusion-3-5-large", {"prompt": f"prompt {n}", "seed": n})
            uri = sink.put_bytes(image_key(job, "png"), buffer.getvalue(), "image/png")
            done = JobOutcome(
                job.job_id, JobStatus.SUCCESS, width=96, height=96, completed_at=t0 + timedelta(n)
            )
            writer.add(job, done, uri)


@pytest.mark.parametrize("fmt", ["webdataset", "hf"])
def test_a_killed_export_leaves_only_whole_shards_and_resumes(tmp_path, fmt):
    source = open_sink(str(tmp_path / "out"))
    record_images(source)
    dest = tmp_path / "export"
    script = textwrap.dedent(CHILD).format(kill_after=3 * ROWS_PER_PART, options=OPTIONS)

    child = subprocess.run([sys.executable, "-c", script, source.root, str(dest), fmt], timeout=120)

    assert child.returncode == -9, "the export was meant to die by SIGKILL mid-way"
    shards_dir = dest / "data" if fmt == "hf" else dest / "train"
    pattern = "*.parquet" if fmt == "hf" else "*.tar"
    whole = sorted(path.name for path in shards_dir.glob(pattern))
    markers = sorted(path.stem for path in (dest / "_promptgrid" / "shards" / "train").glob("*.json"))
    assert whole and len(whole) == len(markers), (whole, markers)
    assert list(shards_dir.glob(".tmp-*.partial")), "the shard being written at the kill stays temporary"
    assert not (dest / "stats.json").exists()
    if fmt == "webdataset":
        for name in whole:  # every visible shard is a complete tar
            with tarfile.open(shards_dir / name) as archive:
                assert len(archive.getnames()) % 3 == 0

    result = export_output(ExportOptions(source.root, str(dest), fmt, **OPTIONS))

    assert result.resumed_shards == len(whole) and result.tally.rows == IMAGES
    assert not list(shards_dir.glob(".tmp-*"))
    check = check_hf if fmt == "hf" else check_wds
    check(dest, source, expected_rows(source))
