"""An output moved (or synced) elsewhere still finds its images: the manifest records each image's key
relative to the output root, and every reader resolves it against where the output lives now. Manifests
written before the key existed (absolute `image_uri` only) still read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.output.manifest.locate import legacy_image_key
from promptgrid.output.manifest.read import part_keys, read_manifest
from promptgrid.output.manifest.rows import MANIFEST_SCHEMA, rows_to_table
from promptgrid.output.saved_spec import save_spec
from promptgrid.output.sinks import open_sink
from promptgrid.types import JobStatus
from tests.support.exports import check_hf, expected_rows
from tests.support.report_run import ReportPage, record_run

SPEC = "name: moved\nmodel: stable-diffusion-3-5-large\nprompts: prompts.csv\noutput: out\n"


def recorded_output(folder: Path):
    sink = open_sink(str(folder))
    jobs = record_run(sink)
    save_spec(sink, SPEC)
    return sink, jobs


def move(folder: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, to)
    return to


def test_each_row_records_its_image_key_relative_to_the_output(tmp_path):
    sink, jobs = recorded_output(tmp_path / "out")
    raw = pq.read_table(sink.local_path(part_keys(sink)[0])).to_pylist()
    by_job = {row["job_id"]: row for row in raw}
    for job in jobs:
        row = by_job[job.job_id]
        assert row["image_key"] == job.image_key
        assert row["image_uri"] == (str(sink.local_path(job.image_key)) if job.image_key else None)


def test_a_moved_output_resolves_every_image_where_it_is_now(tmp_path):
    _, jobs = recorded_output(tmp_path / "out")
    moved = move(tmp_path / "out", tmp_path / "elsewhere" / "renamed")

    rows = {row["job_id"]: row for row in read_manifest(open_sink(str(moved))).to_pylist()}

    for job in jobs:
        if job.image_key:
            assert rows[job.job_id]["image_uri"] == str(moved / job.image_key)
            assert Path(rows[job.job_id]["image_uri"]).is_file()
        else:
            assert rows[job.job_id]["image_uri"] is None and rows[job.job_id]["image_key"] is None


def write_legacy_manifest(sink) -> None:
    """Rewrite the manifest as parts from before `image_key`: the schema without it, absolute URIs only."""
    table = read_manifest(sink)
    for key in part_keys(sink):
        sink.delete(key)
    legacy = table.drop_columns(["image_key"])
    assert "image_key" not in legacy.column_names and "image_uri" in legacy.column_names
    pq.write_table(legacy, sink.local_path("manifest/part-old-w0-abc123-000000.parquet"))


def test_an_older_manifest_reads_after_a_move(tmp_path):
    sink, jobs = recorded_output(tmp_path / "out")
    write_legacy_manifest(sink)
    moved = move(tmp_path / "out", tmp_path / "synced" / "copy")

    table = read_manifest(open_sink(str(moved)))

    assert table.schema.names.index("image_key") == table.schema.names.index("image_uri") + 1
    rows = {row["job_id"]: row for row in table.to_pylist()}
    for job in jobs:
        assert rows[job.job_id]["image_key"] == job.image_key
        if job.image_key:
            assert Path(rows[job.job_id]["image_uri"]) == moved / job.image_key


@pytest.mark.parametrize(
    "root, uri, key",
    [
        ("/new/out", "/new/out/images/m/p/j.webp", "images/m/p/j.webp"),  # not moved
        ("/new/out", "/old/images/out/images/m/p/j.png", "images/m/p/j.png"),  # moved: the layout's tail
        ("s3://b/new", "s3://b/old/images/m/images/j.jpg", "images/m/images/j.jpg"),  # a prompt slug "images"
        ("/new/out", "/old/out/images/j.webp", "images/j.webp"),  # another depth: from the last images/
        ("/new/out", "/somewhere/else.webp", None),
        ("/new/out", None, None),
    ],
)
def test_a_legacy_uri_gives_the_key_the_layout_wrote(root, uri, key):
    assert legacy_image_key(root, uri) == key


def test_a_prefix_synced_to_another_s3_location_reads_there(s3_env, s3_client):
    source = open_sink(f"s3://{s3_env}/runs/a")
    jobs = record_run(source)
    for item in s3_client.list_objects_v2(Bucket=s3_env, Prefix="runs/a/")["Contents"]:
        copy = item["Key"].replace("runs/a/", "mirror/b/", 1)
        s3_client.copy_object(Bucket=s3_env, Key=copy, CopySource={"Bucket": s3_env, "Key": item["Key"]})
    mirror = open_sink(f"s3://{s3_env}/mirror/b")

    rows = {row["job_id"]: row for row in read_manifest(mirror).to_pylist()}

    for job in jobs:
        if job.image_key:
            assert rows[job.job_id]["image_uri"] == f"s3://{s3_env}/mirror/b/{job.image_key}"
            assert mirror.get_bytes(rows[job.job_id]["image_key"]) == source.get_bytes(job.image_key)


@pytest.mark.parametrize("legacy", [False, True], ids=["manifest", "older-manifest"])
def test_report_backfill_dry_run_and_export_work_on_a_moved_output(tmp_path, legacy):
    sink, jobs = recorded_output(tmp_path / "out")
    if legacy:
        write_legacy_manifest(sink)
    moved = move(tmp_path / "out", tmp_path / "moved" / "out")

    report = CliRunner().invoke(app, ["report", str(moved), "--no-sheets"])
    assert report.exit_code == 0, report.output
    page = ReportPage((moved / "report" / "index.html").read_text(encoding="utf-8"))
    for job in [job for job in jobs if job.status == JobStatus.SUCCESS]:
        figure = page.figure_for(job.job_id)
        assert figure.kind == "ok", figure.text
        assert (moved / "report" / urllib.parse.unquote(figure.href)).resolve() == moved / job.image_key

    env = {key: value for key, value in os.environ.items() if key != "EACHLABS_API_KEY"}
    command = [sys.executable, "-m", "promptgrid.cli", "backfill", str(moved), "--dry-run"]
    backfill = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert backfill.returncode == 0, backfill.stderr
    failed = [job.job_id for job in jobs if job.status != JobStatus.SUCCESS]  # cancelled ones too
    assert f"{len(failed)} jobs would run again" in backfill.stdout
    assert all(job_id in backfill.stdout for job_id in failed)
    assert "nothing was sent" in backfill.stdout

    export = CliRunner().invoke(app, ["export", str(moved), "--to", str(tmp_path / "hf")])
    assert export.exit_code == 0, export.output
    check_hf(tmp_path / "hf", open_sink(str(moved)), expected_rows(open_sink(str(moved))))


def test_rows_to_table_keeps_the_image_key_beside_the_uri():
    names = MANIFEST_SCHEMA.names
    assert names.index("image_key") == names.index("image_uri") + 1
    table = rows_to_table([{"run_id": "r", "job_id": "j", "status": "success", "image_key": "images/a.png"}])
    assert table.column("image_key").to_pylist() == ["images/a.png"]
