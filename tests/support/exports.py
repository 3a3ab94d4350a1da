"""What the export tests share: an export read back with the libraries training code uses (`datasets`,
`webdataset`), and the check that it holds exactly the manifest's rows, columns and image bytes."""

from __future__ import annotations

import gc
import glob
import hashlib
import io
import json
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks.base import Sink


def load_hf(folder: Path, *, decode: bool = True) -> list[dict[str, Any]]:
    """Every row of an HF export, read by `datasets.load_dataset("parquet", ...)` (offline: conftest)."""
    import datasets

    files = sorted(glob.glob(str(folder / "data" / "*.parquet")))
    assert files, f"no Parquet shards under {folder}"
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(dataset.features["image"], datasets.Image)
    if not decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return list(dataset)


def load_wds(folder: Path) -> list[dict[str, Any]]:
    """Every sample of a WebDataset export, read by the `webdataset` library, raw (bytes per extension)."""
    import webdataset

    shards = sorted(glob.glob(str(folder / "*.tar")))
    assert shards, f"no tar shards under {folder}"
    # webdataset opens each shard and never closes it (tariterators.tar_file_expander); its ResourceWarning
    # is the library's, so it is silenced here, where the streams are dropped, and nowhere else.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(webdataset.WebDataset(shards, shardshuffle=False, empty_check=False))
        gc.collect()
    return samples


def expected_rows(sink: Sink, **where: Any) -> dict[str, dict[str, Any]]:
    """The manifest's latest successful rows by job id (optionally only those with given values)."""
    rows = [row for row in read_manifest(sink).to_pylist() if row["status"] == "success"]
    rows = [row for row in rows if all(row.get(name) == value for name, value in where.items())]
    return {row["job_id"]: row for row in rows}


def check_hf(folder: Path, sink: Sink, expected: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The HF export holds exactly `expected`: every column, value, image (size, bytes, sha256)."""
    raw = load_hf(folder, decode=False)
    decoded = load_hf(folder)
    assert sorted(row["job_id"] for row in raw) == sorted(expected)
    for row, pictured in zip(raw, decoded, strict=True):
        manifest = expected[row["job_id"]]
        data = row["image"]["bytes"]
        assert hashlib.sha256(data).hexdigest() == recorded_sha256(sink, manifest)
        assert data == sink.get_bytes(manifest["image_key"])
        assert pictured["image"].size == (manifest["width"], manifest["height"])
        assert list(row)[0] == "image"
        exported = {name.removeprefix("manifest_") if name == "manifest_image" else name: value
                    for name, value in row.items() if name not in ("image", "phash")}  # fmt: skip
        assert exported == manifest, row["job_id"]
    return raw


def check_wds(folder: Path, sink: Sink, expected: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The WebDataset export holds exactly `expected`: KEY.json is the row, KEY.txt the prompt, KEY.<ext>
    the image's bytes."""
    samples = load_wds(folder)
    assert sorted(json.loads(sample["json"])["job_id"] for sample in samples) == sorted(expected)
    for sample in samples:
        record = json.loads(sample["json"])
        manifest = expected[record["job_id"]]
        extension = manifest["image_key"].rsplit(".", 1)[-1]
        data = sample[extension]
        assert hashlib.sha256(data).hexdigest() == recorded_sha256(sink, manifest)
        assert data == sink.get_bytes(manifest["image_key"])
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (manifest["width"], manifest["height"])
        assert sample["txt"].decode("utf-8") == manifest["prompt"]
        record.pop("phash", None)
        assert record == as_json(manifest), record["job_id"]
    return samples


def recorded_sha256(sink: Sink, row: dict[str, Any]) -> str:
    """The sha256 the row recorded (a real run records it); a hand-recorded row's stored image's otherwise."""
    return row["sha256"] or hashlib.sha256(sink.get_bytes(row["image_key"])).hexdigest()


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in row.items()}
