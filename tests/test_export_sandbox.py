"""A real sandbox run (the generate flow on Prefect's test server) exported and read back with `datasets`,
`webdataset` and `huggingface_hub`'s card parser: splits from the grid's `split` column, a card `datasets`
takes whole, no trace of where the output lives, WebDataset shards of text-to-image and image-to-image rows,
and a second export after more jobs (a grown grid, a backfill) that keeps the first shards byte for byte.
Then the output moved elsewhere, where `report`, `backfill --dry-run` and `export` work."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from promptgrid.errors import InvalidInput
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.flows.backfill import backfill
from promptgrid.flows.generate import generate
from promptgrid.models.catalog import INPUT_NAMES
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.sandbox.server import SandboxConfig, running_sandbox
from tests.support.exports import (
    card_metadata,
    check_hf,
    check_wds,
    datasets_warnings,
    expected_rows,
    leaks,
    load_hf,
    load_wds,
)
from tests.support.report_run import ReportPage
from tests.support.sandbox import TEST_TIME_SCALE

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
]

KEY = "pg-export-key-3b81"
# prompt, style, split, image (an image-to-image input for the ramen: the output follows its 96x64 shape)
GRID = [
    ("a red fox in snow", "style-0", "train", ""),
    ("a lighthouse at dusk", "style-1", "train", ""),
    ("a bowl of ramen", "style-2", "test", "photo.png"),
]
MORE = [("a paper boat on a pond", "style-3", "test", "")]


def write_study(folder: Path, grid: list[tuple[str, str, str, str]], output: Path) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "style", "split", "image"])
        writer.writerows(grid)
    Image.new("RGB", (96, 64), (200, 120, 40)).save(folder / "photo.png")
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: export-test\nmodel: stable-diffusion-3-5-large\nprompts: prompts.csv\n"
        "inputs: {output_format: webp, aspect_ratio: '1:1', steps: 20}\n"
        f"sweep: {{cfg: [2.5, 4.5]}}\nseeds: [1, 2]\noutput: {output}\n",
        encoding="utf-8",
    )
    return spec


@pytest.fixture(scope="module")
def sandbox_api(prefect_harness) -> Iterator[dict[str, Any]]:
    """A sandbox rejecting some predictions, and the flow parameters that reach it, for the module."""
    config = SandboxConfig(
        time_scale=TEST_TIME_SCALE, api_key=KEY, error_rate=0.3, seed=7,
        error_codes=(("PROVIDER_REJECTED", False),),
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, running_sandbox(config) as sandbox:
        patch.setenv("EACHLABS_API_KEY", KEY)
        yield {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0}


@pytest.fixture(scope="module")
def clean_api(sandbox_api) -> Iterator[dict[str, Any]]:
    """A second sandbox that rejects nothing: the runs that grow an output, whose outcome a test relies on."""
    config = SandboxConfig(time_scale=TEST_TIME_SCALE, api_key=KEY)
    with running_sandbox(config) as sandbox:
        yield {**sandbox_api, "api_base": sandbox.url}


def run_flow(flow: Any, **params: Any) -> Any:
    state = asyncio.run(flow(return_state=True, **params))
    summary = state.result(raise_on_failure=False)  # rejections fail the run; its summary stays
    return summary


@pytest.fixture(scope="module")
def sandbox_run(tmp_path_factory, sandbox_api) -> Iterator[Path]:
    """12 jobs (3 prompts x 2 cfg x 2 seeds; 8 train, 4 test, 4 image-to-image); some fail on purpose."""
    folder = tmp_path_factory.mktemp("sandbox-run")
    spec = write_study(folder, GRID, folder / "out")
    summary = run_flow(generate, spec_path=str(spec), **sandbox_api)
    assert summary.succeeded > 0 and summary.failed > 0, summary
    yield folder / "out"


def export(output: Path, dest: Path, fmt: str = "hf", **options: Any) -> Any:
    return export_output(ExportOptions(str(output), str(dest), fmt, include_sandbox=True, **options))


def test_sandbox_renders_are_refused_unless_asked_for_and_then_labelled(sandbox_run, tmp_path):
    with pytest.raises(InvalidInput, match="placeholder renders.*--include-sandbox"):
        export_output(ExportOptions(str(sandbox_run), str(tmp_path / "hf"), "hf"))
    assert not (tmp_path / "hf").exists()

    export(sandbox_run, tmp_path / "hf")

    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert (
        "**Placeholder images.**" in card and "promptgrid-sandbox" in card_metadata(tmp_path / "hf")["tags"]
    )


def test_hf_export_of_a_sandbox_run_loads_with_datasets(sandbox_run, tmp_path):
    sink = open_sink(str(sandbox_run))
    expected = expected_rows(sink)
    assert all(row["sha256"] and row["width"] == (96 if row["image"] else 1024) for row in expected.values())

    export(sandbox_run, tmp_path / "hf")

    rows = check_hf(tmp_path / "hf", sink, expected)
    columns = set(rows[0])
    assert {"image", "prompt", "seed", "model", "job_id", "style", "cfg", "split"} <= columns
    assert {name if name != "image" else "manifest_image" for name in INPUT_NAMES} <= columns
    assert set(read_manifest(sink).column_names) - {"image", "image_uri"} <= columns
    assert "export-test" in (tmp_path / "hf" / "README.md").read_text()  # the spec's name and text


def test_the_split_column_gives_train_and_test_splits_and_the_card_loads_whole(sandbox_run, tmp_path):
    import datasets

    expected = expected_rows(open_sink(str(sandbox_run)))
    per_split = Counter(row["split"] for row in expected.values())
    assert set(per_split) == {"train", "test"}, per_split

    export(sandbox_run, tmp_path / "hf", license="cc-by-4.0")
    with datasets_warnings() as warned:
        loaded = datasets.load_dataset(str(tmp_path / "hf"))

    assert not [message for message in warned if "dataset_info" in message], warned
    assert {name: loaded[name].num_rows for name in loaded} == dict(per_split)
    assert all(row["split"] == "test" for row in loaded["test"].select_columns(["split"]))
    meta = card_metadata(tmp_path / "hf")
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["text-to-image"]
    assert meta["size_categories"] == ["n<1K"]
    info = meta["dataset_info"]
    assert {split["name"]: split["num_examples"] for split in info["splits"]} == dict(per_split)
    assert all(split["num_bytes"] > 0 for split in info["splits"])
    assert info["dataset_size"] == sum(split["num_bytes"] for split in info["splits"])
    assert [entry["split"] for entry in meta["configs"][0]["data_files"]] == ["train", "test"]
    assert loaded["train"].info.splits["train"].num_examples == per_split["train"]  # the card's, kept
    stats = json.loads((tmp_path / "hf" / "stats.json").read_text())
    assert "split" not in stats["totals"]["per_parameter"] and "cfg" in stats["totals"]["per_parameter"]
    assert "- `split`" not in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def test_no_location_of_the_output_appears_anywhere_in_the_export(sandbox_run, tmp_path):
    places = sorted({str(sandbox_run), os.path.realpath(sandbox_run), str(sandbox_run.parent)})
    for fmt in ("hf", "webdataset"):
        export(sandbox_run, tmp_path / fmt, fmt)
        assert leaks(tmp_path / fmt, places) == [], fmt
        assert "`<output>`" not in (tmp_path / fmt / "README.md").read_text(encoding="utf-8")

    # The scan finds what is there: asked to keep the source's locations, the export holds them.
    export(sandbox_run, tmp_path / "kept", keep_source_uris=True)
    assert any("data/train-00000.parquet" in leak for leak in leaks(tmp_path / "kept", places))


def test_webdataset_export_loads_through_datasets_with_text_to_image_and_img2img_rows(sandbox_run, tmp_path):
    import datasets

    sink = open_sink(str(sandbox_run))
    expected = expected_rows(sink)
    assert {bool(row["image"]) for row in expected.values()} == {True, False}, "both kinds must succeed"
    dest = tmp_path / "wds"

    export(sandbox_run, dest, "webdataset", samples_per_shard=3)

    check_wds(dest, sink, expected)
    with datasets_warnings() as warned:
        loaded = datasets.load_dataset(str(dest))
    assert not [message for message in warned if "dataset_info" in message], warned
    rows = [row for name in loaded for row in loaded[name]]
    assert sorted(row["json"]["job_id"] for row in rows) == sorted(expected)
    assert {row["json"].get("image") for row in rows} == {None, "photo.png"}
    for row in rows:
        manifest = expected[row["json"]["job_id"]]
        assert row["webp"].size == (manifest["width"], manifest["height"])  # 96x64 for image-to-image
    for shard in sorted(dest.glob("*/*.tar")):
        check_shard_sidecars(shard)


def check_shard_sidecars(shard: Path) -> None:
    """At most 3 samples, JSON without nulls, and beside it the metadata Parquet and stats (img2dataset's)."""
    import pyarrow.parquet as pq

    with tarfile.open(shard) as archive:
        members = {member.name: archive.extractfile(member).read() for member in archive.getmembers()}
    records = [json.loads(data) for name, data in members.items() if name.endswith(".json")]
    assert 1 <= len(records) <= 3
    assert all(value is not None for record in records for value in record.values())
    metadata = pq.read_table(shard.with_suffix(".parquet"))
    assert sorted(metadata["job_id"].to_pylist()) == sorted(record["job_id"] for record in records)
    stats = json.loads(shard.with_name(f"{shard.stem}_stats.json").read_text())
    assert stats["successes"] == len(records) and stats["count"] >= len(records)


def snapshot(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.glob(pattern))}


@pytest.mark.parametrize(("fmt", "pattern"), [("hf", "data/*.parquet"), ("webdataset", "*/*.tar")])
def test_a_second_export_after_more_jobs_keeps_the_first_shards_and_adds_the_rest(
    sandbox_run, clean_api, tmp_path, fmt, pattern
):
    output, dest = tmp_path / "out", tmp_path / fmt
    shutil.copytree(sandbox_run, output)
    failed = [
        row["job_id"]
        for row in read_manifest(open_sink(str(output))).to_pylist()
        if row["status"] != "success"
    ]
    export(output, dest, fmt, samples_per_shard=2)
    first = snapshot(dest, pattern)

    run_flow(backfill, output=str(output), **clean_api)  # the failures run again, and succeed
    spec = write_study(tmp_path, GRID + MORE, output)  # the grid grows by a prompt: 4 more jobs
    run_flow(generate, spec_path=str(spec), **clean_api)
    result = export(output, dest, fmt, samples_per_shard=2)

    second = snapshot(dest, pattern)
    assert {name: second.get(name) for name in first} == first, "a first shard changed"
    assert len(second) > len(first) and result.resumed_shards == len(first)
    sink = open_sink(str(output))
    expected = expected_rows(sink)
    assert set(failed) <= set(expected) and len(expected) == 16, "every job now has a success"
    jobs = job_ids(dest, fmt)
    assert sorted(jobs) == sorted(expected)  # each job once, the backfilled ones with their success
    (check_hf if fmt == "hf" else check_wds)(dest, sink, expected)


def test_a_job_run_again_after_an_export_is_superseded_by_its_latest_success(
    sandbox_run, clean_api, tmp_path
):
    output, dest = tmp_path / "out", tmp_path / "hf"
    shutil.copytree(sandbox_run, output)
    export(output, dest, samples_per_shard=2)
    first = snapshot(dest, "data/*.parquet")
    again = sorted(expected_rows(open_sink(str(output))))[0]
    before = expected_rows(open_sink(str(output)))[again]["completed_at"]

    run_flow(backfill, output=str(output), statuses=["success"], where=f"job_id = '{again}'", **clean_api)
    result = export(output, dest, samples_per_shard=2)

    rows = load_hf(dest, decode=False)
    assert [row["job_id"] for row in rows].count(again) == 1 and len(rows) == len(set(job_ids(dest, "hf")))
    latest = expected_rows(open_sink(str(output)))
    assert latest[again]["completed_at"] > before  # the re-run's row, not the one exported first
    assert (
        next(row for row in rows if row["job_id"] == again)["completed_at"] == latest[again]["completed_at"]
    )
    assert result.dropped_shards == 1
    second = snapshot(dest, "data/*.parquet")
    assert sum(second.get(name) != data for name, data in first.items()) == 1  # only its shard was rewritten
    check_hf(dest, open_sink(str(output)), latest)


def job_ids(dest: Path, fmt: str) -> list[str]:
    if fmt == "hf":
        return [row["job_id"] for row in load_hf(dest, decode=False)]
    return [json.loads(sample["json"])["job_id"] for sample in load_wds(dest)]


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

    refused = command("export", str(moved), "--to", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "--include-sandbox" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists()
    wds_line = (
        "export",
        str(moved),
        "--format",
        "webdataset",
        "--to",
        str(tmp_path / "wds"),
        "--include-sandbox",
    )
    export = command(*wds_line)
    assert export.returncode == 0, export.stderr
    check_wds(tmp_path / "wds", open_sink(str(moved)), expected_rows(open_sink(str(moved))))
    export = command(
        "export", str(moved), "--to", str(tmp_path / "hf"), "--where", "cfg > 3", "--include-sandbox"
    )
    assert export.returncode == 0, export.stderr
    assert {row["cfg"] for row in load_hf(tmp_path / "hf", decode=False)} == {4.5}
