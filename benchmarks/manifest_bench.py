"""Figures for a 100,000-row manifest: write, latest view, status-only view, compaction (local folder)."""

import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

from promptgrid.output.manifest.read import latest_status, read_manifest, read_parts
from promptgrid.output.manifest.writer import ManifestWriter, compact
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def timed(label, fn):
    start = time.perf_counter()
    out = fn()
    s = time.perf_counter() - start
    print(f"{label:<34} {s * 1000:9.1f} ms")
    return out, s


with tempfile.TemporaryDirectory() as d:
    sink = open_sink(d)
    inputs = {
        "prompt": "a cat in a hat, oil painting",
        "aspect_ratio": "1:1",
        "cfg": 3.5,
        "steps": 35,
        "seed": 1,
        "output_format": "webp",
        "output_quality": 90,
        "prompt_strength": 0.85,
    }

    def write():
        with ManifestWriter(sink, run_id="bench", spec_hash="h", rows_per_part=500) as w:
            for n in range(ROWS):
                job = Job(
                    job_id=f"{n:032x}",
                    model="stable-diffusion-3-5-large",
                    inputs=inputs | {"seed": n},
                    carried={"style": "oil", "row": n},
                )
                ok = n % 10 != 0
                w.add(
                    job,
                    JobOutcome(
                        job_id=job.job_id,
                        status=JobStatus.SUCCESS if ok else JobStatus.FAILED,
                        prediction_id=f"p{n}",
                        completed_at=T0 + timedelta(seconds=n),
                        sha256="ab" * 32 if ok else None,
                        bytes=123456 if ok else None,
                    ),
                    f"images/x/{n}.webp",
                )
        return w

    w, s_write = timed(f"write {ROWS} rows ({ROWS // 500} parts)", write)
    print(f"{'  per row':<34} {s_write / ROWS * 1e6:9.1f} us")
    _, s_raw = timed("read_parts (all columns, no dedup)", lambda: read_parts(sink))
    t, s_full = timed("read_manifest (latest per job)", lambda: read_manifest(sink))
    st, s_status = timed("latest_status (3 columns)", lambda: latest_status(sink))
    assert t.num_rows == ROWS == len(st)
    print(f"ratio read_manifest / latest_status   {s_full / s_status:9.2f}x")
    n, s_compact = timed("compact", lambda: compact(sink))
    _, s_status2 = timed("latest_status after compaction", lambda: latest_status(sink))
    print(f"ratio latest_status before/after compaction {s_status / s_status2:5.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
