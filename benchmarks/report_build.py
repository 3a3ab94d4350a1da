"""How long the report takes on a 1,000-job local output: first build (thumbnails, sheets) against reruns.

Usage: python benchmarks/report_build.py [PROMPTS]   (default 50 prompts × 5 cfg × 2 steps × 2 seeds)
The baseline is the unchanged rerun measured in the same process; every other figure is a ratio to it.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import product

from PIL import Image

from promptgrid.output.keys import image_key
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks.local import LocalSink
from promptgrid.report.build import SHEET_STATE_KEY, render_report
from promptgrid.types import Job, JobOutcome, JobStatus

CFGS, STEPS, SEEDS = (2.0, 3.5, 5.0, 7.0, 9.0), (20, 35), (1, 2)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample_image() -> bytes:
    """A 1024×1024 WebP with gradients and noise: about the size and decode cost of a generated image."""
    size = (1024, 1024)
    bands = [
        Image.linear_gradient("L").resize(size),
        Image.effect_noise(size, 24),
        Image.radial_gradient("L").resize(size),
    ]
    buffer = io.BytesIO()
    Image.merge("RGB", bands).save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def record_output(sink: LocalSink, prompts: int) -> None:
    """Every job one image (one in ten a failure), recorded through the real manifest writer."""
    data = sample_image()
    with ManifestWriter(sink, run_id="bench", spec_hash="bench") as writer:
        for index, (prompt, cfg, steps, seed) in enumerate(product(range(prompts), CFGS, STEPS, SEEDS)):
            inputs = {"prompt": f"prompt {prompt}", "cfg": cfg, "steps": steps, "seed": seed}
            job = Job(f"job-{index:06d}", "stable-diffusion-3-5-large", inputs)
            queued = T0 + timedelta(seconds=index)
            if index % 10 == 3:
                outcome = JobOutcome(
                    job.job_id, JobStatus.FAILED, "PROVIDER_REJECTED", "filtered", queued_at=queued
                )
                writer.add(job, outcome, None)
                continue
            uri = sink.put_bytes(image_key(job, "webp"), data, "image/webp")
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, api_requests=4, predict_time_s=5.0 + index % 7,
                width=1024, height=1024, queued_at=queued,
            )  # fmt: skip
            writer.add(job, outcome, uri)


def main() -> None:
    prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    sink = LocalSink(tempfile.mkdtemp(prefix="promptgrid-report-bench-"))
    record_output(sink, prompts)
    table = read_manifest(sink)
    print(f"{table.num_rows} jobs, {prompts} prompts")

    def build(label: str) -> float:
        started = time.perf_counter()
        result = render_report(sink, table)
        elapsed = time.perf_counter() - started
        print(f"{label:<38} {elapsed:8.2f} s  thumbnails made {result.thumbnails_made:5d}, "
              f"sheets drawn {result.sheets_drawn:4d}")  # fmt: skip
        return elapsed

    first = build("first build (thumbnails + sheets)")
    rerun = build("unchanged rerun (baseline)")
    sink.delete(SHEET_STATE_KEY)
    sheets = build("sheets redrawn, thumbnails cached")
    cpu = time.process_time()
    print(f"first build / rerun: {first / rerun:.0f}x; sheets / rerun: {sheets / rerun:.0f}x")
    print(
        f"per job: first {first / table.num_rows * 1000:.1f} ms, rerun {rerun / table.num_rows * 1000:.3f} ms"
    )
    print(f"process CPU time so far: {cpu:.1f} s")


if __name__ == "__main__":
    main()
