"""A real sandbox run (the generate flow on Prefect's test server) exported and read back with `datasets`
and `webdataset`; then the output moved elsewhere, where `report`, `backfill --dry-run` and `export` work."""

from __future__ import annotations

import asyncio
import csv
import gc
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.flows.generate import generate
from promptgrid.models.catalog import INPUT_NAMES
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.sandbox.server import SandboxConfig, running_sandbox
from tests.support.exports import check_hf, check_wds, expected_rows, load_hf
from tests.support.report_run import ReportPage
from tests.support.sandbox import TEST_TIME_SCALE

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    # Prefect's result store opens a sync API client it never closes (as in test_flows.py).
    pytest.mark.filterwarnings("ignore:Exception ignored in.*socket:pytest.PytestUnraisableExceptionWarning"),
]

KEY = "pg-export-key-3b81"
PROMPTS = ["a red fox in snow", "a lighthouse at dusk", "a bowl of ramen"]


@pytest.fixture(scope="module")
def sandbox_run(tmp_path_factory, prefect_harness) -> Iterator[Path]:
    """12 jobs (3 prompts x 2 cfg x 2 seeds) with a carried grid column; some fail on purpose."""
    folder = tmp_path_factory.mktemp("sandbox-run")
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "style"])
        writer.writerows([prompt, f"style-{n}"] for n, prompt in enumerate(PROMPTS))
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: export-test\nmodel: stable-diffusion-3-5-large\nprompts: prompts.csv\n"
        "inputs: {output_format: webp, aspect_ratio: '1:1', steps: 20}\n"
        f"sweep: {{cfg: [2.5, 4.5]}}\nseeds: [1, 2]\noutput: {folder / 'out'}\n",
        encoding="utf-8",
    )
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE, api_key=KEY, error_rate=0.3, seed=7,
        error_codes=(("PROVIDER_REJECTED", False),),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, running_sandbox(config) as sandbox:
        patch.setenv("EACHLABS_API_KEY", KEY)
        params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}
        state = asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
        summary = state.result(raise_on_failure=False)  # rejections fail the run; its summary stays
    assert summary["succeeded"] > 0 and summary["failed"] > 0, summary
    yield folder / "out"
    # Collect the socket Prefect's result store leaves open while this module's warning filter applies,
    # rather than in whichever later test the garbage collector happens to run.
    gc.collect()


def test_hf_export_of_a_sandbox_run_loads_with_datasets(sandbox_run, tmp_path):
    sink = open_sink(str(sandbox_run))
    expected = expected_rows(sink)
    assert all(row["sha256"] and row["width"] == 1024 for row in expected.values())

    export_output(ExportOptions(str(sandbox_run), str(tmp_path / "hf"), "hf"))

    rows = check_hf(tmp_path / "hf", sink, expected)
    columns = set(rows[0])
    assert {"image", "prompt", "seed", "model", "job_id", "style", "cfg"} <= columns
    assert {name if name != "image" else "manifest_image" for name in INPUT_NAMES} <= columns
    assert set(read_manifest(sink).column_names) - {"image"} <= columns
    assert "export-test" in (tmp_path / "hf" / "README.md").read_text()  # the spec's name and text


def test_webdataset_export_of_a_sandbox_run_loads_with_webdataset(sandbox_run, tmp_path):
    sink = open_sink(str(sandbox_run))

    export_output(
        ExportOptions(str(sandbox_run), str(tmp_path / "wds"), "webdataset", shard_bytes=50_000, batch_rows=2)
    )

    samples = check_wds(tmp_path / "wds", sink, expected_rows(sink))
    assert all("webp" in sample for sample in samples)
    assert len(list((tmp_path / "wds").glob("*.tar"))) > 1


@pytest.mark.slow
def test_a_moved_sandbox_output_reports_backfills_and_exports(sandbox_run, tmp_path):
    moved = tmp_path / "elsewhere" / "study"
    moved.parent.mkdir()
    shutil.move(sandbox_run, moved)
    try:
        check_moved_output(moved, tmp_path)
    finally:
        shutil.move(moved, sandbox_run)


def check_moved_output(moved: Path, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "EACHLABS_API_KEY"}

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        line = [sys.executable, "-m", "promptgrid.cli", *args]
        return subprocess.run(line, capture_output=True, text=True, env=env, timeout=300)

    rows = read_manifest(open_sink(str(moved))).to_pylist()
    done = [row for row in rows if row["status"] == "success"]
    failed = [row["job_id"] for row in rows if row["status"] != "success"]

    report = command("report", str(moved))
    assert report.returncode == 0, report.stderr
    page = ReportPage((moved / "report" / "index.html").read_text(encoding="utf-8"))
    for row in done:
        figure = page.figure_for(row["job_id"])
        assert figure.kind == "ok", figure.text
        assert (moved / "report" / urllib.parse.unquote(figure.href)).resolve() == moved / row["image_key"]

    backfill = command("backfill", str(moved), "--dry-run")
    assert backfill.returncode == 0, backfill.stderr
    assert f"{len(failed)} jobs would run again" in backfill.stdout
    assert all(job_id in backfill.stdout for job_id in failed)

    export = command("export", str(moved), "--format", "webdataset", "--to", str(tmp_path / "wds"))
    assert export.returncode == 0, export.stderr
    check_wds(tmp_path / "wds", open_sink(str(moved)), expected_rows(open_sink(str(moved))))
    export = command("export", str(moved), "--to", str(tmp_path / "hf"), "--where", "cfg > 3")
    assert export.returncode == 0, export.stderr
    assert {row["cfg"] for row in load_hf(tmp_path / "hf", decode=False)} == {4.5}
