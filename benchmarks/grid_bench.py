"""Time and peak memory of the dry run over a generated million-row Parquet grid (target: 10 s, 1 GiB).

Run: .venv/bin/python benchmarks/grid_bench.py [--rows 1000000]. Prints each stage's time, the job count,
and peak RSS; the baseline is a bare pyarrow read of the same file in the same process, so the ratio says
what checking and expanding add on top of reading.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.tasks.spec.expand import plan_jobs
from promptgrid.tasks.spec.load import load_spec

SPEC = """\
name: grid-bench
model: stable-diffusion-3-5-large
prompts: grid.parquet
inputs: {output_format: webp, output_quality: 90}
seeds: [7]
output: out/grid-bench
"""
SUBJECTS = ("a red fox", "a lighthouse", "a bowl of ramen", "an astronaut", "a glass teapot", "a snow owl")
STYLES = ("oil painting", "studio photo", "watercolor", "pencil sketch", "35mm film", "isometric render")


def write_grid(folder: Path, rows: int) -> Path:
    """A grid like a real study's: unique prompts, a few cfg and aspect ratios per row, carried columns."""
    path = folder / "grid.parquet"
    chunk = 100_000
    schema = pa.schema(
        [("id", pa.string()), ("prompt", pa.string()), ("cfg", pa.float64()), ("aspect_ratio", pa.string()),
         ("split", pa.string())]
    )  # fmt: skip
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, chunk):
            numbers = range(start, min(rows, start + chunk))
            table = pa.table(
                {
                    "id": [f"r{n:07d}" for n in numbers],
                    "prompt": [f"{SUBJECTS[n % 6]}, {STYLES[n // 6 % 6]}, variation {n}" for n in numbers],
                    "cfg": [(2.5, 3.5, 4.5, 5.0)[n % 4] for n in numbers],
                    "aspect_ratio": [("1:1", "16:9", "3:2")[n % 3] for n in numbers],
                    "split": [("train", "val", "test")[n % 10 // 4] for n in numbers],
                },
                schema=schema,
            )
            writer.write_table(table)
    (folder / "spec.yaml").write_text(SPEC)
    return path


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def measure_stages(folder: Path) -> None:
    """In a fresh process: a bare read (the baseline), then load_spec and plan_jobs, timed apart."""
    path = folder / "grid.parquet"
    started = time.perf_counter()
    read_rows = sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(batch_size=50_000))
    baseline = time.perf_counter() - started
    print(f"baseline: pyarrow reads {read_rows:,} rows in {baseline:.2f} s")
    started = time.perf_counter()
    spec = load_spec(folder / "spec.yaml")
    checked = time.perf_counter() - started
    plan = plan_jobs(spec)
    total = time.perf_counter() - started
    print(
        f"load_spec (spec and every row checked): {checked:.2f} s = {checked / baseline:.1f}x the bare read"
    )
    print(f"plan_jobs (expand, hash, dedup): {total - checked:.2f} s; {plan.total_jobs:,} jobs")
    print(f"check + expand: {total:.2f} s = {total / baseline:.1f}x the bare read")
    print(f"per job: {(total - checked) / max(plan.total_jobs, 1) * 1e6:.2f} us to expand and hash")
    print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")


def time_cli(folder: Path) -> tuple[float, float, float, str]:
    """`promptgrid run spec.yaml --dry-run` as a user runs it: wall and CPU s, peak RSS (MiB), jobs line.

    CPU seconds are reported too because wall time on a shared 2-core machine swings with its load.
    """
    cli = Path(sys.executable).with_name("promptgrid")
    started = time.perf_counter()
    done = subprocess.run(
        [str(cli), "run", str(folder / "spec.yaml"), "--dry-run"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the dry run failed ({done.returncode}): {done.stderr}")
    jobs = next(line for line in done.stdout.splitlines() if line.startswith("jobs:"))
    return seconds, usage.ru_utime + usage.ru_stime, peak_rss_mib(resource.RUSAGE_CHILDREN), jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stages", type=Path, help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args(argv)
    if args.stages:
        measure_stages(args.stages)
        return 0
    with tempfile.TemporaryDirectory(prefix="grid-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        path = write_grid(folder, args.rows)
        size = path.stat().st_size / 2**20
        print(f"wrote {args.rows:,} rows ({size:.1f} MiB Parquet) in {time.perf_counter() - started:.2f} s")
        seconds, cpu, rss, jobs = time_cli(folder)
        print(
            f"promptgrid run --dry-run: {seconds:.2f} s wall, {cpu:.2f} s CPU, peak RSS {rss:.0f} MiB; {jobs}"
        )
        print(f"load average (1 min) while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        verdict = "met" if seconds <= 10 and rss <= 1024 else "MISSED"
        print(f"target (<= 10 s and <= 1024 MiB): {verdict}")
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--stages", str(folder)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
