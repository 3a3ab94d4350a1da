"""The Parquet manifest written through real sinks (temp folder, loopback S3) and read by four readers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import promptgrid
from promptgrid.output.manifest.read import (
    latest_outcomes,
    latest_status,
    part_keys,
    provenance,
    read_manifest,
    read_parts,
    status_counts,
)
from promptgrid.output.manifest.rows import MANIFEST_SCHEMA
from promptgrid.output.manifest.writer import ManifestWriter, compact
from promptgrid.output.saved_spec import read_saved_spec, save_spec
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.s3 import S3Sink
from promptgrid.types import Job, JobOutcome, JobStatus

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_job(n: int, carried: dict | None = None) -> Job:
    inputs = {
        "prompt": f"prompt {n}",
        "aspect_ratio": "1:1",
        "cfg": 3.5,
        "steps": 35,
        "seed": 4_000_000_000 + n,
    }
    inputs |= {"image": None, "prompt_strength": 0.85, "output_format": "webp", "output_quality": 90}
    return Job(job_id=f"job{n:05d}", model="stable-diffusion-3-5-large", inputs=inputs, carried=carried or {})


def make_outcome(n: int, status=JobStatus.SUCCESS, minutes: float = 0, **extra) -> JobOutcome:
    done = T0 + timedelta(minutes=minutes)
    fields = dict(prediction_id=f"pred-{n}", attempts=1, api_requests=3, queued_at=T0, completed_at=done)
    if status == JobStatus.SUCCESS:
        fields |= dict(
            sha256="ab" * 32, bytes=1234, width=1024, height=1024, predict_time_s=7.5, cost_usd=0.065
        )
    else:
        fields |= dict(error_code="PROVIDER_REJECTED", error_message="filtered")
    return JobOutcome(job_id=f"job{n:05d}", status=status, **(fields | extra))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def sink(request, tmp_path):
    if request.param == "local":
        return open_sink(str(tmp_path / "out"))
    return open_sink(request.getfixturevalue("s3_output"))


def write(sink, items, *, run_id="run1", worker_id="w0", rows_per_part=500):
    with ManifestWriter(
        sink, run_id=run_id, spec_hash="spec-abc", worker_id=worker_id, rows_per_part=rows_per_part
    ) as w:
        for job, outcome, uri in items:
            w.add(job, outcome, uri)
    return w


def test_rows_round_trip_with_inputs_carried_columns_and_types(sink):
    jobs = [make_job(n, {"style": "oil", "rank": n, "prompt": "dup name"}) for n in range(3)]
    outcomes = [make_outcome(0), make_outcome(1, JobStatus.FAILED), make_outcome(2, JobStatus.TIMED_OUT)]
    writer = write(
        sink,
        [
            (j, o, sink.uri(f"images/{j.job_id}.webp") if o.sha256 else None)
            for j, o in zip(jobs, outcomes, strict=True)
        ],
    )
    assert writer.close() == {"success": 1, "failed": 1, "timed_out": 1}
    table = read_manifest(sink)
    assert table.num_rows == 3
    for field in MANIFEST_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.schema.field("completed_at").type == pa.timestamp("us", tz="UTC")
    rows = {row["job_id"]: row for row in table.to_pylist()}
    ok = rows["job00000"]
    assert ok["status"] == "success" and ok["seed"] == 4_000_000_000 and ok["cfg"] == 3.5
    assert (
        ok["image_uri"] == sink.uri("images/job00000.webp")
        and ok["bytes"] == 1234
        and ok["cost_usd"] == 0.065
    )
    assert ok["style"] == "oil" and ok["rank"] == "0" and ok["carried_prompt"] == "dup name"
    assert json.loads(ok["carried"]) == {"style": "oil", "rank": 0, "prompt": "dup name"}
    assert ok["prompt"] == "prompt 0" and ok["completed_at"] == T0
    assert rows["job00001"]["error_code"] == "PROVIDER_REJECTED" and rows["job00001"]["image_uri"] is None
    assert latest_status(sink) == {"job00000": "success", "job00001": "failed", "job00002": "timed_out"}


def test_parts_are_cut_every_n_rows_and_named_per_writer(sink):
    writer = write(sink, [(make_job(n), make_outcome(n), None) for n in range(7)], rows_per_part=3)
    assert len(writer.parts_written) == 3 and part_keys(sink) == sorted(writer.parts_written)
    other = write(sink, [(make_job(n), make_outcome(n), None) for n in range(2)], worker_id="w1")
    again = write(sink, [(make_job(n), make_outcome(n), None) for n in range(2)])  # same run and worker ids
    assert len(set(part_keys(sink))) == 5
    assert not set(other.parts_written) & set(again.parts_written)
    assert read_parts(sink).num_rows == 11 and read_manifest(sink).num_rows == 7


def test_parts_are_flushed_after_flush_s_seconds(tmp_path):
    sink, clock = open_sink(str(tmp_path)), FakeClock()
    writer = ManifestWriter(sink, run_id="r", spec_hash="h", rows_per_part=100, flush_s=5, clock=clock)
    writer.add(make_job(0), make_outcome(0), None)
    writer.maybe_flush()
    assert part_keys(sink) == []
    clock.now = 5.0
    writer.maybe_flush()
    assert len(part_keys(sink)) == 1
    writer.add(make_job(1), make_outcome(1), None)
    clock.now = 10.5
    writer.add(make_job(2), make_outcome(2), None)  # an add past the interval commits too
    assert len(part_keys(sink)) == 2
    writer.add(make_job(3), make_outcome(3), None)
    # No close: the process "crashed" with one row buffered; only that row is lost.
    assert sorted(latest_status(sink)) == ["job00000", "job00001", "job00002"]


def shadowing_rows():
    """Outcomes of four jobs whose latest rows test each rule: success first, then time, then order."""
    return [
        (make_job(1), make_outcome(1, minutes=1), "img"),
        (make_job(1), make_outcome(1, JobStatus.FAILED, minutes=9, prediction_id="late"), None),
        (make_job(2), make_outcome(2, JobStatus.FAILED, minutes=1, prediction_id="old"), None),
        (make_job(2), make_outcome(2, JobStatus.TIMED_OUT, minutes=5, prediction_id="new"), None),
        (make_job(3), make_outcome(3, JobStatus.FAILED, minutes=2), None),
        (make_job(3), make_outcome(3, minutes=2, prediction_id="tie"), "img"),
        (make_job(4), make_outcome(4, JobStatus.FAILED, completed_at=None), None),
        (make_job(4), make_outcome(4, JobStatus.CANCELLED, minutes=-60), None),
    ]


@pytest.mark.parametrize("rows_per_part", [1, 100])
def test_latest_row_per_job_rules(tmp_path, rows_per_part):
    sink = open_sink(str(tmp_path))
    write(sink, shadowing_rows(), rows_per_part=rows_per_part)
    assert latest_outcomes(sink) == {
        "job00001": ("success", "pred-1"),
        "job00002": ("timed_out", "new"),
        "job00003": ("success", "tie"),
        "job00004": ("cancelled", "pred-4"),
    }
    assert status_counts(sink) == {"success": 2, "timed_out": 1, "cancelled": 1}
    assert read_manifest(sink)["job_id"].to_pylist() == ["job00001", "job00002", "job00003", "job00004"]


def test_naive_timestamps_are_taken_as_utc(tmp_path):
    sink = open_sink(str(tmp_path))
    naive = datetime(2026, 5, 6, 7, 8, 9)
    write(sink, [(make_job(0), make_outcome(0, completed_at=naive), None)])
    assert read_manifest(sink)["completed_at"].to_pylist() == [naive.replace(tzinfo=UTC)]


def test_runs_with_different_carried_columns_read_as_one_table_by_every_reader(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    write(sink, [(make_job(n, {"style": "oil"}), make_outcome(n), None) for n in range(3)], run_id="a")
    write(
        sink,
        [(make_job(n, {"camera": "35mm"}), make_outcome(n, minutes=5), None) for n in range(2, 5)],
        run_id="b",
    )
    mine = read_manifest(sink)
    assert mine.num_rows == 5
    by_id = {row["job_id"]: row for row in mine.to_pylist()}
    assert by_id["job00000"]["style"] == "oil" and by_id["job00000"]["camera"] is None
    assert by_id["job00002"]["camera"] == "35mm" and by_id["job00002"]["run_id"] == "b"

    folder = tmp_path / "out" / "manifest"
    files = sorted(str(path) for path in folder.glob("*.parquet"))
    schema = pa.unify_schemas([pq.read_schema(path) for path in files])
    dataset = ds.dataset(files, schema=schema, format="parquet")
    assert dataset.to_table().num_rows == 6 and {"style", "camera"} <= set(dataset.schema.names)

    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    assert len(frame) == 6 and frame["camera"].notna().sum() == 3

    query = "select count(*), count(distinct job_id), count(camera) from read_parquet(?, union_by_name=true)"
    assert duckdb.connect().execute(query, [f"{folder}/*.parquet"]).fetchone() == (6, 5, 3)


def test_compaction_keeps_the_view_and_is_readable_everywhere(sink, tmp_path):
    write(
        sink,
        [(make_job(n, {"style": "oil"}), make_outcome(n, JobStatus.FAILED), None) for n in range(4)],
        rows_per_part=2,
    )
    write(
        sink,
        [(make_job(n, {"lens": "wide"}), make_outcome(n, minutes=3), "img") for n in range(2)],
        run_id="r2",
    )
    before = read_manifest(sink)
    assert compact(sink) == 4
    assert len(part_keys(sink)) == 1
    after = read_manifest(sink)
    assert after.to_pylist() == before.to_pylist()
    assert provenance(sink)["promptgrid.compacted_from"] == "3"
    assert compact(sink) == 4 and len(part_keys(sink)) == 1
    local = tmp_path / "compacted.parquet"
    local.write_bytes(sink.get_bytes(part_keys(sink)[0]))
    assert pd.read_parquet(local)["job_id"].is_unique
    query = "select count(*) from read_parquet(?) where status = 'success'"
    assert duckdb.connect().execute(query, [str(local)]).fetchone() == (2,)
    assert ds.dataset(str(local)).count_rows() == 4


def test_provenance_and_spec_are_saved_beside_the_manifest(sink):
    assert provenance(sink) == {} and read_manifest(sink).num_rows == 0 and latest_status(sink) == {}
    write(sink, [(make_job(0), make_outcome(0), None)], run_id="run-42")
    meta = provenance(sink)
    assert meta["promptgrid.spec_hash"] == "spec-abc" and meta["promptgrid.run_id"] == "run-42"
    assert meta["promptgrid.version"] == promptgrid.__version__ and "promptgrid.written_at" in meta
    with pytest.raises(FileNotFoundError):
        read_saved_spec(sink)
    save_spec(sink, "grid: prompts.csv\n# café\n")
    assert read_saved_spec(sink) == "grid: prompts.csv\n# café\n"
    assert len(list(sink.list_keys("specs/"))) == 1


def test_a_failed_commit_keeps_rows_buffered_until_the_store_answers(s3_env, s3_client):
    bucket = f"{s3_env}-late"
    sink = S3Sink(bucket, "out")
    writer = ManifestWriter(sink, run_id="r", spec_hash="h", rows_per_part=1)
    with pytest.raises(Exception, match="NoSuchBucket"):
        writer.add(make_job(0), make_outcome(0), None)
    s3_client.create_bucket(Bucket=bucket)
    assert writer.close() == {"success": 1}
    assert latest_status(sink) == {"job00000": "success"}


def test_concurrent_adds_from_threads_lose_nothing(tmp_path):
    sink = open_sink(str(tmp_path))
    writer = ManifestWriter(sink, run_id="r", spec_hash="h", rows_per_part=7)

    def add_range(start):
        for n in range(start, start + 50):
            writer.add(make_job(n), make_outcome(n), None)

    threads = [threading.Thread(target=add_range, args=(k * 50,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.close() == {"success": 200}
    assert len(latest_status(sink)) == 200 and read_parts(sink).num_rows == 200
    with pytest.raises(RuntimeError):
        writer.add(make_job(1), make_outcome(1), None)


def test_mismatched_job_and_outcome_are_refused(tmp_path):
    writer = ManifestWriter(open_sink(str(tmp_path)), run_id="r", spec_hash="h")
    with pytest.raises(ValueError):
        writer.add(make_job(1), make_outcome(2), None)


def test_readers_see_every_job_while_compaction_runs(tmp_path):
    sink = open_sink(str(tmp_path))
    write(sink, [(make_job(n), make_outcome(n), None) for n in range(40)], rows_per_part=4)
    done = threading.Event()

    def compact_repeatedly():
        for round_ in range(8):
            write(
                sink,
                [(make_job(n), make_outcome(n, minutes=round_), None) for n in range(40)],
                rows_per_part=8,
            )
            compact(sink)
        done.set()

    compactor = threading.Thread(target=compact_repeatedly)
    compactor.start()
    reads = 0
    while not done.is_set() or reads == 0:
        assert len(latest_status(sink)) == 40
        reads += 1
    compactor.join()
    assert reads >= 1 and len(part_keys(sink)) == 1
