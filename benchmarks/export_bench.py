"""Peak memory of `promptgrid export` for 1,000 and 10,000 images: streaming must keep it flat.

Usage: python benchmarks/export_bench.py [SMALL LARGE]   (default 1000 10000)

Two synthetic outputs are recorded (distinct 256 px JPEGs of random blocks, ~20 KB each, manifest written
by the real ManifestWriter in parts of 500 rows; the image files are written without the sink's per-file
fsync, which would only slow the set-up). Each export then runs in a fresh process, since peak RSS only
grows, with the default 500 MB shard size, so the larger output fits in one shard: an export that held a
shard, or the dataset, in memory would show it. `hf+dedup` adds `--dedup` (a pHash per image, an index of
the kept ones). The baseline is the smaller output's peak in the same run;
a process that only imports the export stage is measured too, for the fixed cost.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from promptgrid.output.keys import image_key
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks.local import LocalSink
from promptgrid.types import Job, JobOutcome, JobStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CFGS, SEEDS = (2.5, 3.5, 4.5, 5.5, 7.0), (1, 2, 3, 4)

CHILD = """
import resource, sys, time
from promptgrid.export.exporter import ExportOptions, export_output
started = time.perf_counter()
if sys.argv[1] != "import-only":
    fmt, _, dedup = sys.argv[1].partition("+")
    options = ExportOptions(sys.argv[2], sys.argv[3], fmt, dedup_distance=4 if dedup else None)
    result = export_output(options)
    images, shards, size = result.tally.images, result.shards, result.tally.bytes
else:
    images = shards = size = 0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT {images} {shards} {size} {time.perf_counter() - started:.2f} {peak:.1f}")
"""


def record_output(folder: Path, images: int) -> int:
    """`images` successful jobs with distinct JPEGs; returns the bytes of image data written."""
    sink = LocalSink(folder)
    rng = np.random.default_rng(images)
    total = 0
    with ManifestWriter(sink, run_id="bench", spec_hash="bench") as writer:
        for n in range(images):
            blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(blocks).resize((256, 256), Image.Resampling.BILINEAR).save(
                buffer, "JPEG", quality=85
            )
            data = buffer.getvalue()
            inputs = {
                "prompt": f"prompt {n // 20}",
                "cfg": CFGS[n % 5],
                "seed": SEEDS[n // 5 % 4],
                "output_format": "jpg",
            }
            job = Job(f"job-{n:06d}", "stable-diffusion-3-5-large", inputs, carried={"row": n // 20})
            key = image_key(job, "jpg")
            path = sink.local_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            total += len(data)
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, width=256, height=256, bytes=len(data),
                completed_at=T0 + timedelta(seconds=n),
            )  # fmt: skip
            writer.add(job, outcome, sink.uri(key), key)
    return total


def measure(fmt: str, output: Path, dest: Path) -> tuple[int, int, int, float, float]:
    """Run one export in a fresh process; its images, shards, bytes, seconds and peak RSS (MiB)."""
    command = [sys.executable, "-c", CHILD, fmt, str(output), str(dest)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ})
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    images, shards, size, seconds, peak = line.split()[1:]
    return int(images), int(shards), int(size), float(seconds), float(peak)


def main() -> None:
    small, large = (int(arg) for arg in sys.argv[1:3]) if len(sys.argv) > 2 else (1000, 10000)
    with tempfile.TemporaryDirectory(prefix="promptgrid-export-bench-") as folder:
        root = Path(folder)
        for size in (small, large):
            started = time.perf_counter()
            written = record_output(root / f"out-{size}", size)
            seconds = time.perf_counter() - started
            print(f"recorded {size:>6} images, {written / 1e6:6.1f} MB, in {seconds:.1f} s")
        *_, baseline = measure("import-only", root, root / "none")
        print(f"a process that only imports the export stage: peak RSS {baseline:.0f} MiB")
        for fmt in ("hf", "webdataset", "hf+dedup"):
            peaks = {}
            for size in (small, large):
                images, shards, written, seconds, peak = measure(
                    fmt, root / f"out-{size}", root / f"{fmt}-{size}"
                )
                peaks[size] = peak
                print(
                    f"{fmt:<10} {images:>6} images, {written / 1e6:6.1f} MB in {shards} shard(s): "
                    f"{seconds:6.2f} s, peak RSS {peak:6.1f} MiB"
                )
            ratio = peaks[large] / peaks[small]
            verdict = "met" if ratio <= 1.5 else "MISSED"
            print(
                f"{fmt:<10} peak RSS {large:,} / {small:,} images: {ratio:.2f}x (target <= 1.5x: {verdict})"
            )
    print(f"this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
