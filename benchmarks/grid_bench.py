"""Time and peak memory of the dry run over a million-row Parquet grid, and over a template that renders a
million prompts (target: 10 s, 1 GiB; the template within the grid's time and memory).

Run: .venv/bin/python benchmarks/grid_bench.py [--rows 1000000]. Prints each stage's time, the job count,
and peak RSS; the baseline is a bare pyarrow read of the same file in the same process, so the ratio says
what checking and expanding add on top of reading. The template case (three wildcard files whose product
is --rows prompts, one seed) runs in the same invocation, and its figures are printed as ratios to the
grid's: both are `promptgrid run --dry-run` processes measured alike.
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
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.spec.load import load_spec
from promptgrid.spec.plan import plan_jobs

SPEC = """\
name: grid-bench
model: stable-diffusion-3-5-large
prompts: grid.parquet
inputs: {output_format: webp, output_quality: 90}
seeds: [7]
output: out/grid-bench
"""
TEMPLATE_SPEC = """\
name: template-bench
model: stable-diffusion-3-5-large
template: "{subject}, {style}, {detail}"
inputs: {output_format: webp, output_quality: 90}
sweep:
  subject: {file: subjects.txt}
  style: {file: styles.txt}
  detail: {file: details.txt}
seeds: [7]
output: out/template-bench
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


def write_template(folder: Path, prompts: int) -> tuple[int, int, int]:
    """Three wildcard files whose product is `prompts` (rounded down), values like the grid's prompt parts."""
    side = max(1, round(prompts ** (1 / 3)))
    sizes = (side, side, max(1, prompts // (side * side)))
    names = ("subjects", "styles", "details")
    for name, size, words in zip(names, sizes, (SUBJECTS, STYLES, ("variation",)), strict=True):
        lines = [f"{words[n % len(words)]} {n}" for n in range(size)]
        (folder / f"{name}.txt").write_text("# generated\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (folder / "template.yaml").write_text(TEMPLATE_SPEC)
    return sizes


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


class DryRun(NamedTuple):
    """One `promptgrid run --dry-run` process: wall and CPU seconds, its own peak RSS, its jobs line."""

    seconds: float
    cpu: float
    rss_mib: float
    jobs: str


def measure_template_stages(folder: Path) -> None:
    """In a fresh process: load_spec (files read, every template check) and plan_jobs, timed apart."""
    started = time.perf_counter()
    spec = load_spec(folder / "template.yaml")
    checked = time.perf_counter() - started
    plan = plan_jobs(spec)
    expanded = time.perf_counter() - started - checked
    print(f"template load_spec (wildcard files, checks): {checked:.2f} s")
    print(f"template plan_jobs (render, hash, dedup): {expanded:.2f} s; {plan.total_jobs:,} jobs")
    print(f"template per job: {expanded / max(plan.total_jobs, 1) * 1e6:.2f} us to render and hash")
    print(f"template peak RSS of this process: {peak_rss_mib():.0f} MiB")


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


def time_cli(spec: Path) -> DryRun:
    """`promptgrid run SPEC --dry-run` as a user runs it, its resources read from its own exit (wait4), so
    two runs in one benchmark are measured apart.

    CPU seconds are reported too because wall time on a shared 2-core machine swings with its load.
    """
    cli = Path(sys.executable).with_name("promptgrid")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(cli), "run", str(spec), "--dry-run"], stdout=out, stderr=err, text=True
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"the dry run failed ({process.returncode}): {err.read()}")
        jobs = next(line for line in out.read().splitlines() if line.startswith("jobs:"))
    return DryRun(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stages", type=Path, help=argparse.SUPPRESS)  # the child process's entry
    parser.add_argument("--template-stages", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stages:
        measure_stages(args.stages)
        return 0
    if args.template_stages:
        measure_template_stages(args.template_stages)
        return 0
    with tempfile.TemporaryDirectory(prefix="grid-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        path = write_grid(folder, args.rows)
        size = path.stat().st_size / 2**20
        print(f"wrote {args.rows:,} rows ({size:.1f} MiB Parquet) in {time.perf_counter() - started:.2f} s")
        sizes = write_template(folder, args.rows)
        print(f"wrote a template of {' x '.join(map(str, sizes))} wildcard values")
        grid = time_cli(folder / "spec.yaml")
        template = time_cli(folder / "template.yaml")
        for name, run in (("grid", grid), ("template", template)):
            print(
                f"{name}: promptgrid run --dry-run: {run.seconds:.2f} s wall, {run.cpu:.2f} s CPU, "
                f"peak RSS {run.rss_mib:.0f} MiB; {run.jobs}"
            )
        wall, cpu, rss = (
            template.seconds / grid.seconds,
            template.cpu / grid.cpu,
            template.rss_mib / grid.rss_mib,
        )
        print(f"template / grid: {wall:.2f}x wall, {cpu:.2f}x CPU, {rss:.2f}x peak RSS")
        print(f"load average (1 min) while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        verdict = "met" if grid.seconds <= 10 and grid.rss_mib <= 1024 else "MISSED"
        print(f"grid target (<= 10 s and <= 1024 MiB): {verdict}")
        within = template.cpu <= grid.cpu * 1.1 and template.rss_mib <= grid.rss_mib * 1.1
        verdict = "met" if within else "MISSED"
        print(f"template target (CPU and peak RSS at most the grid's, 10% for noise): {verdict}")
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--stages", str(folder)], check=True)
        subprocess.run([sys.executable, __file__, "--template-stages", str(folder)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
