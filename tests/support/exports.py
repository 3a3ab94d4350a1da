"""What the export tests share: an export read back with the libraries training code uses (`datasets`,
`webdataset`, `huggingface_hub`'s card parser), the check that it holds exactly the manifest's rows,
columns and image bytes (as published: no `image_uri`, image keys relative to the export), and a scan of
every byte it wrote for a location it must not reveal."""

from __future__ import annotations

import gc
import glob
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from promptgrid.export.samples import sample_key
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks.base import Sink


def load_hf(folder: Path, *, decode: bool = True) -> list[dict[str, Any]]:
    """Every row of an HF export, read by `datasets.load_dataset("parquet", ...)` (offline: conftest)."""
    import datasets

    files = sorted(glob.glob(str(folder / "data" / "*.parquet")))  # every split
    assert files, f"no Parquet shards under {folder}"
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(dataset.features["image"], datasets.Image)
    if not decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return list(dataset)


def load_wds(folder: Path) -> list[dict[str, Any]]:
    """Every sample of a WebDataset export, read by the `webdataset` library, raw (bytes per extension)."""
    import webdataset

    shards = sorted(glob.glob(str(folder / "*" / "*.tar")))  # every split's folder
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


def published(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row as an export publishes it: no `image_uri`; `image_key` names the image in the export."""
    public = {name: value for name, value in row.items() if name != "image_uri"}
    if row.get("image_key"):
        public["image_key"] = f"{sample_key(row['job_id'])}.{row['image_key'].rsplit('.', 1)[-1]}"
    return public


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
        assert exported == published(manifest), row["job_id"]
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
        present = {name: value for name, value in published(manifest).items() if value is not None}
        assert record == as_json(present), record["job_id"]
    return samples


def recorded_sha256(sink: Sink, row: dict[str, Any]) -> str:
    """The sha256 the row recorded (a real run records it); a hand-recorded row's stored image's otherwise."""
    return row["sha256"] or hashlib.sha256(sink.get_bytes(row["image_key"])).hexdigest()


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value.isoformat() if isinstance(value, datetime) else value for name, value in row.items()}


def every_file(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file())


def leaks(folder: Path, secrets: list[str]) -> list[str]:
    """Each file (Parquet and tar included) whose bytes hold one of `secrets`, plainly or zstd-compressed
    inside a Parquet page: every page of every column is read back decoded, so compression hides nothing."""
    import pyarrow.parquet as pq

    found = []
    for path in every_file(folder):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
            data += str(pq.read_schema(path).metadata).encode()
        found += [f"{path.relative_to(folder)}: {secret}" for secret in secrets if secret.encode() in data]
    return found


def card_metadata(folder: Path) -> dict[str, Any]:
    """The card's YAML as huggingface_hub's own card parser reads it."""
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(folder / "README.md")
    return card.data.to_dict()


@contextmanager
def datasets_warnings() -> Iterator[list[str]]:
    """Every warning `datasets` logs meanwhile (its loggers do not propagate: a handler is added)."""
    import datasets

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = datasets.logging.get_logger("datasets")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
