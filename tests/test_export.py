"""`promptgrid export` on recorded runs (real manifest writer, Pillow-made images), read back with
`datasets` and `webdataset`: rows, columns and image bytes match the manifest; filters, near-duplicates,
resuming, restarting and S3 both ways."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.errors import InvalidInput
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus
from tests.support.exports import check_hf, check_wds, expected_rows, load_hf
from tests.support.report_run import FAILURES, record_retry_success, record_run


@pytest.fixture
def recorded(tmp_path):
    """A finished run: 32 images, 4 failures (one job later retried is not among them)."""
    sink = open_sink(str(tmp_path / "out"))
    record_run(sink)
    return sink


def export(source, dest, fmt="hf", **options):
    return export_output(ExportOptions(output=source.root, dest=str(dest), format=fmt, **options))


def test_hf_export_loads_with_datasets_and_matches_the_manifest(recorded, tmp_path):
    result = export(recorded, tmp_path / "hf", license="cc-by-4.0")

    expected = expected_rows(recorded)
    assert len(expected) == 32 and result.tally.rows == 32 and result.tally.unreadable == 0
    check_hf(tmp_path / "hf", recorded, expected)
    stats = json.loads((tmp_path / "hf" / "stats.json").read_text())
    assert stats["totals"]["rows"] == 32 and [s["key"] for s in stats["shards"]] == [
        "data/train-00000.parquet"
    ]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "| stable-diffusion-3-5-large | 32 |" in card
    assert "- `cfg`: 2.0: 11, 4.5: 10, 7.0: 11" in card and "promptgrid 0.1.0" in card
    # what came back (format, size check) and the slug as sent describe the outcome, not the sweep
    counted = {*stats["totals"]["per_parameter"], *stats["totals"]["parameters_with_many_values"]}
    assert "cfg" in counted and not {"image_format", "size_mismatch", "resolved_model"} & counted


def test_the_card_lets_datasets_load_the_folder_by_itself(recorded, tmp_path):
    import datasets

    export(recorded, tmp_path / "hf")
    dataset = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert dataset.num_rows == 32 and isinstance(dataset.features["image"], datasets.Image)
    assert dataset[0]["image"].size == (96, 96)


def test_webdataset_shards_are_bounded_and_load_with_webdataset(recorded, tmp_path):
    result = export(recorded, tmp_path / "wds", "webdataset", shard_bytes=20_000, batch_rows=4)

    check_wds(tmp_path / "wds", recorded, expected_rows(recorded))
    shards = sorted(str(path.relative_to(tmp_path / "wds")) for path in (tmp_path / "wds").glob("*/*.tar"))
    assert result.shards == len(shards) > 1 and shards[0] == "train/00000.tar"
    # A shard closes at the first batch boundary past the size: over it by less than one batch.
    batch_max = 4 * (3 * 512 + 1024) + 10240  # 4 samples of 3 small members, and tar's closing record
    assert all((tmp_path / "wds" / name).stat().st_size < 20_000 + batch_max for name in shards)
    assert all((tmp_path / "wds" / name.replace(".tar", "_stats.json")).exists() for name in shards)
    stats = json.loads((tmp_path / "wds" / "stats.json").read_text())
    assert sum(shard["rows"] for shard in stats["shards"]) == 32


def test_hf_shards_are_bounded_and_each_row_group_is_one_batch(recorded, tmp_path):
    export(recorded, tmp_path / "hf", shard_bytes=4_000, batch_rows=5)

    files = sorted((tmp_path / "hf" / "data").glob("*.parquet"))
    assert len(files) > 1
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        assert all(metadata.row_group(n).num_rows <= 5 for n in range(metadata.num_row_groups))
    check_hf(tmp_path / "hf", recorded, expected_rows(recorded))


def test_where_and_status_pick_the_rows(recorded, tmp_path):
    export(recorded, tmp_path / "hot", where="cfg > 4 AND steps = 35")
    check_hf(
        tmp_path / "hot",
        recorded,
        expected_rows(recorded, steps=35, cfg=4.5) | expected_rows(recorded, steps=35, cfg=7.0),
    )

    export(recorded, tmp_path / "all", statuses=("success", "failed", "timed_out", "cancelled"))
    rows = load_hf(tmp_path / "all", decode=False)
    assert len(rows) == 36
    failed = [row for row in rows if row["status"] != "success"]
    assert len(failed) == len(FAILURES) and all(row["image"] is None for row in failed)


def test_bad_filters_are_refused_before_anything_is_written(recorded, tmp_path):
    with pytest.raises(InvalidInput, match="no_such_column"):
        export(recorded, tmp_path / "x", where="no_such_column > 1")
    with pytest.raises(InvalidInput, match="unknown status"):
        export(recorded, tmp_path / "x", statuses=("succeeded",))
    assert not (tmp_path / "x").exists()


def pattern(seed: int) -> Image.Image:
    """A 128 px image of random 8x8 blocks: unlike a flat colour, it has a perceptual hash of its own."""
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((128, 128), Image.Resampling.BILINEAR)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def record_patterns(sink, originals: int, copies: dict[int, int]) -> None:
    """`originals` distinct images, then for each (copy job -> original) a lightly changed JPEG of it."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    with ManifestWriter(sink, run_id="dups", spec_hash="h") as writer:
        for n in range(originals + len(copies)):
            source = pattern(copies.get(n, n))
            data = (
                encoded(source)
                if n not in copies
                else encoded(source.point(lambda v: min(255, v + 4)), "JPEG", quality=92)
            )
            job = Job(
                f"job-{n:03d}",
                "stable-diffusion-3-5-large",
                {"prompt": f"p{n}", "seed": n, "output_format": "png"},
            )
            key = image_key(job, "png" if n not in copies else "jpg")
            uri = sink.put_bytes(key, data, "image/png")
            outcome = JobOutcome(
                job.job_id, JobStatus.SUCCESS, width=128, height=128, completed_at=t0 + timedelta(seconds=n)
            )
            writer.add(job, outcome, uri)


def test_dedup_drops_near_duplicates_of_earlier_images_and_counts_them(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    record_patterns(sink, originals=12, copies={12: 3, 13: 7, 14: 3})

    result = export(sink, tmp_path / "hf", dedup_distance=6)

    assert result.tally.duplicates == 3 and result.tally.images == 12
    rows = load_hf(tmp_path / "hf", decode=False)
    assert sorted(row["job_id"] for row in rows) == [f"job-{n:03d}" for n in range(12)]
    assert all(len(row["phash"]) == 16 for row in rows)
    assert "near-duplicate images dropped (`--dedup`): 3" in (tmp_path / "hf" / "README.md").read_text()
    assert export(sink, tmp_path / "all").tally.images == 15  # without --dedup every image stays


def test_an_export_already_complete_is_not_written_again(recorded, tmp_path):
    export(recorded, tmp_path / "wds", "webdataset")
    stamp = (tmp_path / "wds" / "train" / "00000.tar").stat().st_mtime_ns

    again = export(recorded, tmp_path / "wds", "webdataset")

    assert again.already_complete and again.tally.rows == 32
    assert (tmp_path / "wds" / "train" / "00000.tar").stat().st_mtime_ns == stamp


def test_a_grown_manifest_adds_shards_and_keeps_the_first_ones(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    failed = next(job for job in record_run(sink) if job.status == JobStatus.FAILED)
    first = export(sink, tmp_path / "hf", samples_per_shard=5)
    before = {path.name: path.read_bytes() for path in (tmp_path / "hf" / "data").iterdir()}
    record_retry_success(sink, failed, (10, 20, 30))  # a later run adds a part: the failed job succeeds

    result = export(sink, tmp_path / "hf", samples_per_shard=5)

    assert not result.already_complete and result.resumed_shards == first.shards and result.tally.rows == 33
    check_hf(tmp_path / "hf", sink, expected_rows(sink))
    after = {path.name: path.read_bytes() for path in (tmp_path / "hf" / "data").iterdir()}
    assert {name: after[name] for name in before} == before and len(after) == len(before) + 1


def test_another_plan_starts_the_export_over(recorded, tmp_path):
    export(recorded, tmp_path / "hf", samples_per_shard=5)

    result = export(recorded, tmp_path / "hf", samples_per_shard=10)

    assert result.resumed_shards == 0 and result.shards == 4
    names = sorted(path.name for path in (tmp_path / "hf" / "data").iterdir())
    assert names == [f"train-{n:05d}.parquet" for n in range(4)]  # nothing left of the first
    check_hf(tmp_path / "hf", recorded, expected_rows(recorded))


def test_an_interrupted_export_keeps_whole_shards_and_resumes(recorded, tmp_path):
    calls = []

    def stop_after_two_shards(progress):
        calls.append(progress)
        if progress.shards >= 2:
            raise KeyboardInterrupt

    options = ExportOptions(
        recorded.root, str(tmp_path / "wds"), "webdataset", shard_bytes=20_000, batch_rows=4
    )
    with pytest.raises(KeyboardInterrupt):
        export_output(options, on_progress=stop_after_two_shards)
    folder = tmp_path / "wds"
    assert not (folder / "stats.json").exists()
    assert not list(folder.rglob(".tmp-*")), "an unfinished shard must not stay behind"
    kept = sorted(path.name for path in folder.glob("train/*.tar"))
    assert kept == sorted(
        path.name.replace(".json", ".tar") for path in (folder / "_promptgrid" / "shards" / "train").iterdir()
    )

    result = export_output(options)

    assert result.resumed_shards == len(kept) >= 2 and result.tally.rows == 32
    check_wds(folder, recorded, expected_rows(recorded))


def test_a_missing_image_is_left_out_and_named(recorded, tmp_path):
    row = next(iter(expected_rows(recorded).values()))
    recorded.delete(row["image_key"])

    result = export(recorded, tmp_path / "hf")

    assert result.tally.unreadable == 1 and result.tally.rows == 31
    assert any(row["job_id"] in problem and "missing" in problem for problem in result.tally.problems)
    assert row["job_id"] in (tmp_path / "hf" / "README.md").read_text()


def test_s3_output_to_s3_destination(s3_output, s3_env, s3_client, tmp_path):
    sink = open_sink(s3_output)
    record_run(sink)
    dest = f"s3://{s3_env}/exports/demo"

    for fmt in ("hf", "webdataset"):
        export_output(ExportOptions(s3_output, f"{dest}-{fmt}", fmt, shard_bytes=10_000, batch_rows=8))
        listing = s3_client.list_objects_v2(Bucket=s3_env, Prefix=f"exports/demo-{fmt}/")["Contents"]
        local = tmp_path / fmt
        for item in listing:
            target = local / item["Key"].removeprefix(f"exports/demo-{fmt}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3_client.get_object(Bucket=s3_env, Key=item["Key"])["Body"].read())
        assert (local / "stats.json").exists()
    check_hf(tmp_path / "hf", sink, expected_rows(sink))
    check_wds(tmp_path / "webdataset", sink, expected_rows(sink))


def test_the_command_exports_and_says_what_it_wrote(recorded, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "export",
            recorded.root,
            "--format",
            "webdataset",
            "--to",
            str(tmp_path / "wds"),
            "--shard-size",
            "1MB",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "32 rows, 32 images" in result.output and "in 1 shard\n" in result.output
    check_wds(tmp_path / "wds", recorded, expected_rows(recorded))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--format", "zip"], "--format 'zip'"),
        (["--where", "cfg >"], "--where"),
        (["--shard-size", "big"], "--shard-size"),
    ],
)
def test_the_command_refuses_bad_input_with_exit_2(recorded, tmp_path, arguments, message):
    command = [sys.executable, "-m", "promptgrid.cli", "export", recorded.root, "--to", str(tmp_path / "x")]
    done = subprocess.run(command + arguments, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "x").exists()


def test_an_output_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no manifest"):
        export_output(ExportOptions(str(tmp_path / "empty"), str(tmp_path / "x"), "hf"))
    assert Path(tmp_path / "x").exists() is False


@pytest.mark.parametrize("distance", [0, 1, 4, 9])
def test_the_near_duplicate_index_finds_what_comparing_every_pair_finds(distance):
    from promptgrid.export.dedup import NearDuplicateIndex

    rng = np.random.default_rng(distance)
    kept: list[int] = []
    index = NearDuplicateIndex(distance)
    for n in range(600):
        value = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        if n % 3 and kept:  # a third fresh, the rest near an earlier hash: 0 to distance + 2 bits flipped
            value = kept[int(rng.integers(0, len(kept)))]
            for bit in rng.choice(64, size=int(rng.integers(0, distance + 3)), replace=False):
                value ^= 1 << int(bit)
        near = any((value ^ other).bit_count() <= distance for other in kept)
        assert (index.keep_if_new(value, f"j{n}") is not None) == near
        if not near:
            kept.append(value)
    assert len(index) == len(kept)


def test_a_part_compacted_away_mid_export_stops_it_and_a_rerun_goes_on(tmp_path):
    from promptgrid.errors import ExportFailed
    from promptgrid.output.manifest.read import part_keys
    from promptgrid.output.manifest.writer import compact

    sink = open_sink(str(tmp_path / "out"))
    failed = next(job for job in record_run(sink) if job.status == JobStatus.FAILED)
    record_retry_success(sink, failed, (10, 20, 30))
    assert len(part_keys(sink)) == 2

    def compact_meanwhile(progress):
        if len(part_keys(sink)) == 2:
            compact(sink)  # the second part, not read yet, is gone

    options = ExportOptions(sink.root, str(tmp_path / "hf"), "hf")
    with pytest.raises(ExportFailed, match="vanished"):
        export_output(options, on_progress=compact_meanwhile)
    assert not (tmp_path / "hf" / "stats.json").exists()

    result = export_output(options)

    assert result.tally.rows == 33  # the shards finished before the part vanished are kept
    check_hf(tmp_path / "hf", sink, expected_rows(sink))
