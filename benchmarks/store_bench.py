"""What the crash-safe store order costs per image: `OutcomeStore.save` against the bare image-then-row save.

Both store the same outcomes (a ~300 KB image each) into a fresh local folder (or `s3://...` given as the
second argument, with the standard AWS settings) through the same sink and manifest writer; the store order
adds, before each image, the journal record of its key, size, hash and row (an fsynced line locally, one
PUT on S3). Prints images/s for each (median of interleaved rounds) and their ratio, in this one process.

    python benchmarks/store_bench.py [IMAGES] [OUTPUT_ROOT]
"""

import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

from promptgrid.engine.progress import RunProgress
from promptgrid.output.journal import Journal
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus

IMAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 300
ROOT = sys.argv[2] if len(sys.argv) > 2 else None
ROUNDS = 5
IMAGE = os.urandom(300_000)  # the size of a 1024x1024 webp at quality 90
DIGEST = hashlib.sha256(IMAGE).hexdigest()


def outcomes(tag: str) -> list[tuple[Job, JobOutcome]]:
    now = datetime.now(UTC)
    pairs = []
    for n in range(IMAGES):
        inputs = {"prompt": f"a cat in a hat {tag} {n}", "seed": n, "cfg": 3.5, "output_format": "webp"}
        job = Job(job_id=hashlib.sha256(f"{tag}{n}".encode()).hexdigest(), model="m", inputs=inputs)
        outcome = JobOutcome(
            job.job_id, JobStatus.SUCCESS, prediction_id=f"p{n}", attempts=1, api_requests=2,
            submitted_at=now, completed_at=now, sha256=DIGEST, bytes=len(IMAGE), width=1024, height=1024,
        )  # fmt: skip
        pairs.append((job, outcome))
    return pairs


async def bare(root: str) -> float:
    """The order before: the image, then its row (no journal record)."""
    sink = open_sink(root)
    pairs = outcomes("bare")
    start = time.perf_counter()
    with ManifestWriter(sink, run_id="bare", spec_hash="h") as writer:
        for job, outcome in pairs:
            key = image_key(job, "webp")
            uri = await asyncio.to_thread(sink.put_bytes, key, IMAGE, "image/webp", {"job-id": job.job_id})
            await asyncio.to_thread(writer.add, job, outcome, uri, key)
    return time.perf_counter() - start


async def ordered(root: str) -> float:
    """The store order: journal record, image, row (`OutcomeStore.save`)."""
    sink = open_sink(root)
    pairs = outcomes("ordered")
    journal = Journal(sink, "bench-s0")
    start = time.perf_counter()
    with ManifestWriter(sink, run_id="ordered", spec_hash="h") as writer:
        store = OutcomeStore(sink, journal, writer, RunProgress(total=IMAGES))
        for job, outcome in pairs:
            outcome.image = IMAGE
            await store.save(job, outcome)
    journal.close()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = ROOT.rstrip("/") + f"/{uuid.uuid4().hex[:8]}" if ROOT else folder
        times: dict[str, list[float]] = {"bare": [], "ordered": []}
        for round_ in range(ROUNDS):  # interleaved, so a busy moment of the machine hits both alike
            for name, run in (("bare", bare), ("ordered", ordered)):
                times[name].append(asyncio.run(run(f"{root}/{name}-{round_}")))
        for name, spans in times.items():
            median = statistics.median(spans)
            print(
                f"{name:<8} {IMAGES / median:8.1f} images/s  ({median / IMAGES * 1000:.2f} ms each, median)"
            )
        ratio = statistics.median(times["ordered"]) / statistics.median(times["bare"])
        print(f"store order / bare: {ratio:.2f}x the time per image (median of {ROUNDS} rounds each)")


if __name__ == "__main__":
    main()
