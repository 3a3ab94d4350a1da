"""A batch of manifest rows made into samples: each image fetched from the output, checked against the
sha256 its row recorded, hashed and dropped when it nearly duplicates an earlier one (with `--dedup`).

Images are fetched on a small thread pool, one batch at a time, so memory holds one batch of images.
An image that is missing or does not match its row is left out and said in the tally, never replaced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from promptgrid.export.dedup import NearDuplicateIndex, hash_text, perceptual_hash
from promptgrid.export.source import image_ids
from promptgrid.export.tally import Tally
from promptgrid.output.keys import safe_token
from promptgrid.output.sinks import Sink
from promptgrid.types import JobStatus

_UNDECODABLE = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One exported row's image (None for a row without one), its file extension and pHash."""

    key: str
    image: bytes | None
    extension: str | None
    phash: str | None = None

    @property
    def file_name(self) -> str | None:
        return f"{self.key}.{self.extension}" if self.extension else None


@dataclass(frozen=True)
class SampleBatch:
    """The kept rows (the manifest's columns, as the source reads them) and their samples, in order."""

    rows: pa.Table
    samples: list[Sample]


@dataclass(frozen=True)
class Loaded:
    data: bytes | None = None
    problem: str | None = None
    phash: int | None = None


def sample_key(job_id: str) -> str:
    """A WebDataset-safe key: the job id, with nothing that reads as a folder or an extension."""
    return safe_token(job_id).replace(".", "_")


def exported_names(names: Iterable[str], reserved: Iterable[str]) -> dict[str, str]:
    """Manifest column -> exported name: its own, unless the export adds a column of that name (the
    manifest's `image`, an image-to-image input, becomes `manifest_image`)."""
    taken = set(names) | set(reserved)
    renamed = {}
    for name in names:
        new = name
        while new in reserved or (new != name and new in taken):
            new = f"manifest_{new}"
        taken.add(new)
        renamed[name] = new
    return renamed


class SampleMaker:
    """Turns batches of manifest rows into samples: fetch, verify, hash, drop near-duplicates, count."""

    def __init__(
        self, sink: Sink, pool: Executor, parameters: list[str], index: NearDuplicateIndex | None = None
    ):
        self.sink, self.pool, self.parameters, self.index = sink, pool, parameters, index

    def make(self, rows: pa.Table, tally: Tally) -> SampleBatch:
        records = rows.to_pylist()
        ids = image_ids(rows)  # a `num_images` job's images are samples of their own
        keep: list[int] = []
        samples: list[Sample] = []
        for position, (row, loaded) in enumerate(
            zip(records, self.pool.map(self._load, records), strict=True)
        ):
            job_id = ids[position]
            if loaded.problem is not None:
                tally.count_problem(f"{job_id}: {loaded.problem}")
                continue
            if self._is_duplicate(loaded, job_id):
                tally.duplicates += 1
                continue
            keep.append(position)
            extension = _extension(row.get("image_key")) if loaded.data is not None else None
            phash = hash_text(loaded.phash) if loaded.phash is not None else None
            samples.append(Sample(sample_key(job_id), loaded.data, extension, phash))
            tally.count_row(row, len(loaded.data) if loaded.data is not None else None, self.parameters)
        return SampleBatch(rows.take(pa.array(keep, pa.int64())), samples)

    def _is_duplicate(self, loaded: Loaded, job_id: str) -> bool:
        """Whether the image nearly duplicates one kept earlier; a new one is kept in the index."""
        if self.index is None or loaded.phash is None:
            return False
        return self.index.keep_if_new(loaded.phash, job_id) is not None

    def _load(self, row: dict[str, Any]) -> Loaded:
        key = row.get("image_key")
        if row.get("status") != JobStatus.SUCCESS.value:
            return Loaded()  # a failure row, exported without an image when its status was asked for
        if not key:
            return Loaded(problem="its image is not inside this output (its row locates it elsewhere)")
        try:
            data = self.sink.get_bytes(str(key))
        except FileNotFoundError:
            return Loaded(problem=f"its image {key} is missing")
        expected = row.get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            return Loaded(problem=f"its image {key} does not match the sha256 its row recorded")
        if self.index is None:
            return Loaded(data)
        try:
            return Loaded(data, phash=perceptual_hash(data))
        except _UNDECODABLE as exc:
            return Loaded(problem=f"its image {key} could not be decoded ({type(exc).__name__})")


def _extension(key: Any) -> str | None:
    name = str(key or "").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else None
