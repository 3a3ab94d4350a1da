"""What makes an export publishable and growable, on recorded runs (real manifest writer, Pillow-made
images): the spec's `split:` shares by job id, shards cut at `--samples-per-shard`, a card `datasets` and
huggingface_hub take whole, nothing of the output's location (S3 too), incremental exports to S3, and
`export --dry-run`."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.export.splits import SplitRule
from promptgrid.output.saved_spec import save_spec
from promptgrid.output.sinks import open_sink
from promptgrid.spec.split import parse_split
from promptgrid.types import JobStatus
from tests.support.exports import (
    card_metadata,
    check_hf,
    check_wds,
    datasets_warnings,
    expected_rows,
    leaks,
    load_hf,
)
from tests.support.report_run import record_retry_success, record_run

SPEC = "name: study\nmodel: stable-diffusion-3-5-large\nprompts: grid.csv\noutput: {output}\n"


@pytest.fixture
def recorded(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    record_run(sink)
    return sink


def export(source, dest, fmt="hf", **options):
    return export_output(ExportOptions(output=source.root, dest=str(dest), format=fmt, **options))


def test_the_spec_split_shares_assign_rows_by_job_id_stably(recorded, tmp_path):
    import datasets

    save_spec(recorded, SPEC.format(output=recorded.root) + "split: {train: 0.75, test: 0.25}\n")
    rule = SplitRule((("train", 0.75), ("test", 0.25)))

    result = export(recorded, tmp_path / "hf")

    expected = expected_rows(recorded)
    wanted = {job: rule.by_job(job) for job in expected}
    assert result.splits == {name: list(wanted.values()).count(name) for name in ("train", "test")}
    assert 0 < result.splits["test"] < result.splits["train"]
    with datasets_warnings() as warned:
        loaded = datasets.load_dataset(str(tmp_path / "hf"))
    assert not [message for message in warned if "dataset_info" in message], warned
    assert {row["job_id"]: name for name in loaded for row in loaded[name]} == wanted
    # a job's split follows from its id alone: the same for any other set of jobs
    assert [SplitRule((("train", 0.75), ("test", 0.25))).by_job(job) for job in wanted] == list(
        wanted.values()
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"train": 0.9, "test": 0.2}, "add up to 1.1"),
        ({"train": 1.2}, "not a share"),
        ({"train/x": 1.0}, "not a split name"),
        ([0.9, 0.1], "not a mapping"),
    ],
)
def test_bad_split_shares_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_split(value)


def test_a_bad_split_in_the_saved_spec_is_refused_before_anything_is_written(recorded, tmp_path):
    save_spec(recorded, SPEC.format(output=recorded.root) + "split: {train: 0.5}\n")
    with pytest.raises(InvalidInput, match="spec.yaml: split: the split shares add up to 0.5"):
        export(recorded, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_samples_per_shard_cuts_every_shard_at_that_many_rows(recorded, tmp_path):
    result = export(recorded, tmp_path / "hf", samples_per_shard=7)

    files = sorted((tmp_path / "hf" / "data").glob("*.parquet"))
    assert [pq.ParquetFile(path).metadata.num_rows for path in files] == [7, 7, 7, 7, 4]
    assert result.shards == 5
    check_hf(tmp_path / "hf", recorded, expected_rows(recorded))


def test_the_card_is_taken_whole_by_huggingface_hub_and_datasets(recorded, tmp_path):
    import datasets

    export(recorded, tmp_path / "hf", license="cc-by-4.0")

    meta = card_metadata(tmp_path / "hf")
    info = meta["dataset_info"]
    assert meta["task_categories"] == ["text-to-image"] and meta["size_categories"] == ["n<1K"]
    assert info["splits"] == [{"name": "train", "num_bytes": info["dataset_size"], "num_examples": 32}]
    assert info["download_size"] == sum(path.stat().st_size for path in (tmp_path / "hf" / "data").iterdir())
    assert {feature["name"] for feature in info["features"]} >= {"image", "job_id", "cfg", "image_key"}
    assert "image_uri" not in {feature["name"] for feature in info["features"]}
    with datasets_warnings() as warned:
        loaded = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert loaded.num_rows == 32 and warned == []
    assert "stable-diffusion-3-5-large" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_no_bucket_uri_reaches_an_export_of_an_s3_output_and_it_grows_in_place(
    s3_output, s3_env, s3_client, tmp_path
):
    sink = open_sink(s3_output)
    failed = next(job for job in record_run(sink) if job.status == JobStatus.FAILED)
    dest = f"s3://{s3_env}/exports/grow"

    def download(into):
        listing = s3_client.list_objects_v2(Bucket=s3_env, Prefix="exports/grow/")["Contents"]
        for item in listing:
            target = into / item["Key"].removeprefix("exports/grow/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3_client.get_object(Bucket=s3_env, Key=item["Key"])["Body"].read())
        return {item["Key"]: item["ETag"] for item in listing if item["Key"].endswith(".tar")}

    export_output(ExportOptions(s3_output, dest, "webdataset", samples_per_shard=8))
    first = download(tmp_path / "first")
    record_retry_success(sink, failed, (10, 20, 30))
    result = export_output(ExportOptions(s3_output, dest, "webdataset", samples_per_shard=8))
    second = download(tmp_path / "second")

    assert result.resumed_shards == len(first) == 4 and {key: second[key] for key in first} == first
    assert len(second) == 5
    check_wds(tmp_path / "second", sink, expected_rows(sink))
    assert leaks(tmp_path / "second", [s3_output, f"s3://{s3_env}"]) == []


def test_the_dry_run_says_what_an_export_would_add_and_writes_nothing(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    failed = next(job for job in record_run(sink) if job.status == JobStatus.FAILED)
    dest = tmp_path / "hf"
    command = ["export", sink.root, "--to", str(dest), "--samples-per-shard", "8"]

    fresh = CliRunner().invoke(app, [*command, "--dry-run"])
    assert fresh.exit_code == 0, fresh.output
    assert "would examine 32 rows" in fresh.output and "nothing was written" in fresh.output
    assert not dest.exists()

    assert CliRunner().invoke(app, command).exit_code == 0
    record_retry_success(sink, failed, (10, 20, 30))
    grown = CliRunner().invoke(app, [*command, "--dry-run"])
    assert "would examine 1 rows" in grown.output and "kept from an earlier export: 4 shards" in grown.output
    done = CliRunner().invoke(app, command)
    assert "33 rows" in done.output and "(4 kept from an earlier export)" in done.output
    assert "already exported" in CliRunner().invoke(app, [*command, "--dry-run"]).output
    assert len(load_hf(dest, decode=False)) == 33


def test_keeping_the_source_uris_is_asked_for(recorded, tmp_path):
    export(recorded, tmp_path / "hf", keep_source_uris=True)

    rows = load_hf(tmp_path / "hf", decode=False)
    manifest = expected_rows(recorded)
    assert all(row["image_uri"] == manifest[row["job_id"]]["image_uri"] for row in rows)
    assert json.loads((tmp_path / "hf" / "stats.json").read_text())["plan"]["keep_source_uris"] is True


def test_the_spec_takes_a_split_key_that_leaves_its_hash_alone(tmp_path):
    from promptgrid.spec.load import load_spec_text

    (tmp_path / "p.csv").write_text("prompt\na fox\n", encoding="utf-8")
    text = "model: stable-diffusion-3-5-large\nprompts: p.csv\n"

    plain = load_spec_text(text, tmp_path, "s.yaml")
    split = load_spec_text(text + "split: {train: 0.9, test: 0.1}\n", tmp_path, "s.yaml")

    assert split.split == {"train": 0.9, "test": 0.1} and plain.split is None
    assert split.spec_hash == plain.spec_hash  # it decides how a dataset is cut, not what a run makes
    with pytest.raises(InvalidInput, match="split"):
        load_spec_text(text + "split: {train: 0.9}\n", tmp_path, "s.yaml")


def test_a_card_without_num_bytes_is_what_datasets_warns_about(recorded, tmp_path):
    """The check the card tests make can fail: the card of an older export, without `num_bytes`, is heard."""
    import datasets

    export(recorded, tmp_path / "hf")
    card = tmp_path / "hf" / "README.md"
    text = card.read_text(encoding="utf-8")
    card.write_text(re.sub(r"\n +num_bytes: \d+", "", text), encoding="utf-8")

    with datasets_warnings() as warned:
        datasets.load_dataset(str(tmp_path / "hf"), split="train")

    assert any("Ignoring part of dataset_info" in message for message in warned), warned


def test_a_row_with_a_split_value_keeps_it_and_the_shares_split_the_rest():
    import pyarrow as pa

    rule = SplitRule((("train", 0.5), ("test", 0.5)))
    jobs = [f"job-{n:03d}" for n in range(40)]
    rows = pa.table({"job_id": jobs, "split": ["validation", "", None, *([None] * 37)]})

    assigned = rule.assign(rows)

    assert assigned[0] == "validation" and assigned[1:] == [rule.by_job(job) for job in jobs[1:]]
    assert set(assigned[1:]) == {"train", "test"}
    assert rule.names(["validation"]) == ["train", "test", "validation"]
    assert SplitRule().assign(pa.table({"job_id": jobs})) == ["train"] * 40
