"""An export from start to finish: the manifest's rows streamed in batches, each batch's images fetched and
checked, written into the current shard, and every shard published whole with its marker after it.

Memory holds one batch of manifest rows and one batch of images (at most `batch_rows` images or about
`batch_bytes`), never a shard, let alone the dataset: shards grow on disk and are published when they
pass `shard_bytes`. The dataset card and `stats.json` come last; `stats.json` says the export completed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import yaml

from promptgrid.export import hf, wds
from promptgrid.export.card import CardFacts, render_card
from promptgrid.export.dedup import NearDuplicateIndex
from promptgrid.export.samples import SampleBatch, SampleMaker
from promptgrid.export.source import ManifestSource, check_where, iter_batches, open_source
from promptgrid.export.staging import Staging
from promptgrid.export.state import STATS_KEY, ExportState, Resume, ShardRecord
from promptgrid.export.tally import Tally, parameter_columns
from promptgrid.output.saved_spec import read_saved_spec
from promptgrid.output.sinks import Sink, open_sink
from promptgrid.version import VERSION

CARD_KEY = "README.md"
FETCH_THREADS = 8
READ_BATCH_ROWS = 1024
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class ExportFormat:
    """Where a format's shards live and what they are called."""

    name: str
    shard_key: Callable[[int], str]
    is_shard_key: Callable[[str], bool]
    listing_prefix: str
    data_files: str
    content_type: str


FORMATS = {
    "hf": ExportFormat(
        "hf", hf.shard_key, hf.is_shard_key, hf.DATA_PREFIX, "data/train-*.parquet", hf.CONTENT_TYPE
    ),
    "webdataset": ExportFormat("webdataset", wds.shard_key, wds.is_shard_key, "", "*.tar", wds.CONTENT_TYPE),
}


@dataclass(frozen=True)
class ExportOptions:
    """What to export, where, and how: the CLI's flags."""

    output: str
    dest: str
    format: str
    statuses: tuple[str, ...] = ("success",)
    where: str | None = None
    shard_bytes: int = 500 * 10**6
    dedup_distance: int | None = None  # None: no near-duplicate check
    license: str | None = None
    restart: bool = False
    batch_rows: int = 100
    batch_bytes: int = 32 * 2**20

    def plan(self, source: ManifestSource) -> dict[str, Any]:
        """What decides the shards' content: a resumed export must have the same plan."""
        return {
            "layout": LAYOUT_VERSION,
            "format": self.format,
            "source": source.fingerprint,
            "statuses": sorted(self.statuses),
            "where": self.where,
            "shard_bytes": self.shard_bytes,
            "dedup_distance": self.dedup_distance,
            "batch_rows": self.batch_rows,
            "batch_bytes": self.batch_bytes,
        }


@dataclass(frozen=True)
class ExportProgress:
    examined: int  # manifest rows looked at (of `total`)
    total: int
    rows: int  # rows written
    shards: int
    bytes: int


@dataclass(frozen=True)
class ExportResult:
    dest: str
    shards: int
    tally: Tally
    resumed_shards: int = 0
    already_complete: bool = False


def export_output(
    options: ExportOptions, on_progress: Callable[[ExportProgress], None] | None = None
) -> ExportResult:
    """Export OUTPUT to DEST; resumes what an interrupted export of the same plan left there."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown export format {options.format!r}")
    source = open_source(open_sink(options.output), list(options.statuses))
    check_where(source.schema, options.where)
    dest = open_sink(options.dest)
    export_format = FORMATS[options.format]
    staging = Staging(dest)
    try:
        state = ExportState(dest, staging, export_format.listing_prefix, export_format.is_shard_key)
        staging.remove_leftovers([export_format.listing_prefix])
        resume = state.begin(options.plan(source), options.restart)
        if resume.complete is not None:
            shards = len(resume.complete["shards"])
            tally = Tally.from_dict(resume.complete["totals"])
            return ExportResult(dest.root, shards, tally, resumed_shards=shards, already_complete=True)
        run = ShardedExport(options, source, export_format, staging, state, resume, on_progress)
        return run.run()
    finally:
        staging.close()


@dataclass
class OpenShard:
    index: int
    key: str
    path: Path
    handle: BinaryIO
    writer: hf.ParquetShard | wds.TarShard
    rows: int = 0
    hashes: list[tuple[str, str]] = field(default_factory=list)


class ShardedExport:
    """One export's loop: rows in, shards out, markers after each shard, card and stats at the end."""

    def __init__(
        self,
        options: ExportOptions,
        source: ManifestSource,
        export_format: ExportFormat,
        staging: Staging,
        state: ExportState,
        resume: Resume,
        on_progress: Callable[[ExportProgress], None] | None,
    ):
        self.options, self.source, self.format = options, source, export_format
        self.staging, self.state, self.on_progress = staging, state, on_progress
        self.shards = list(resume.shards)
        self.resumed = len(self.shards)
        self.resume_at = resume.consumed
        self.position = 0  # rows of the filtered stream handled so far
        self.examined = 0
        self.pending = Tally()  # rows handled since the last finished shard
        self.current: OpenShard | None = None
        self.started = datetime.now(UTC)
        self.index: NearDuplicateIndex | None = None
        if options.dedup_distance is not None:
            self.index = NearDuplicateIndex(options.dedup_distance)
            for shard in self.shards:
                for value, job_id in shard.hashes:
                    self.index.add(int(value, 16), job_id)

    def run(self) -> ExportResult:
        parameters = parameter_columns(self.source.schema.names)
        try:
            with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
                maker = SampleMaker(self.source.sink, pool, parameters, self.index)
                for batch in iter_batches(self.source, self.options.where, READ_BATCH_ROWS):
                    self.examined += batch.examined
                    for chunk in self._chunks(self._skip_done(batch.rows)):
                        self._write(maker.make(chunk, self.pending), chunk.num_rows)
                    self._report()
            if self.current is not None:
                self._finish_shard()
        except BaseException:
            self._abandon_shard()
            raise
        return self._complete()

    def _skip_done(self, rows: pa.Table) -> pa.Table:
        """Rows a finished shard already holds are passed over without fetching their images."""
        skip = min(rows.num_rows, max(0, self.resume_at - self.position))
        self.position += skip
        return rows.slice(skip)

    def _chunks(self, rows: pa.Table) -> Iterator[pa.Table]:
        """Batches of at most `batch_rows` images and about `batch_bytes` (by the manifest's sizes)."""
        sizes = rows["bytes"].to_pylist() if "bytes" in rows.column_names else [0] * rows.num_rows
        start, total = 0, 0
        for end, size in enumerate(sizes, 1):
            total += size or 0
            if end - start >= self.options.batch_rows or total >= self.options.batch_bytes:
                yield rows.slice(start, end - start)
                start, total = end, 0
        if start < rows.num_rows:
            yield rows.slice(start)

    def _write(self, batch: SampleBatch, handled: int) -> None:
        self.position += handled
        if not batch.samples:
            return
        shard = self.current or self._open_shard()
        shard.writer.write(batch)
        shard.rows += batch.rows.num_rows
        jobs = batch.rows["job_id"].to_pylist()
        shard.hashes += [(s.phash, str(job)) for s, job in zip(batch.samples, jobs, strict=True) if s.phash]
        if shard.writer.size() >= self.options.shard_bytes:
            self._finish_shard()

    def _open_shard(self) -> OpenShard:
        index = len(self.shards)
        key = self.format.shard_key(index)
        path = self.staging.new_file(key)
        handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by _finish_shard or _abandon_shard
        writer: hf.ParquetShard | wds.TarShard
        if self.format.name == "hf":
            writer = hf.ParquetShard(handle, self.source.schema, self.index is not None)
        else:
            writer = wds.TarShard(handle, mtime=self.started.timestamp())
        self.current = OpenShard(index, key, path, handle, writer)
        return self.current

    def _finish_shard(self) -> None:
        shard = self.current
        assert shard is not None
        shard.writer.close()
        shard.handle.close()
        size = shard.path.stat().st_size
        self.staging.publish(shard.path, shard.key, self.format.content_type)
        record = ShardRecord(
            shard.index, shard.key, shard.rows, size, self.position, self.pending, shard.hashes
        )
        self.state.record(record)
        self.shards.append(record)
        self.pending = Tally()
        self.current = None

    def _abandon_shard(self) -> None:
        # An unfinished shard never reaches its final name: its temporary file goes.
        if self.current is not None:
            with contextlib.suppress(Exception):
                self.current.writer.close()  # before its file: a writer finalised later would write to it
            with contextlib.suppress(Exception):
                self.current.handle.close()
            self.staging.discard(self.current.path)
            self.current = None

    def _report(self) -> None:
        if self.on_progress is not None:
            written = sum(shard.rows for shard in self.shards) + (self.current.rows if self.current else 0)
            size = sum(shard.bytes for shard in self.shards)
            self.on_progress(
                ExportProgress(self.examined, self.source.total, written, len(self.shards), size)
            )

    def _complete(self) -> ExportResult:
        self.state.remove_from(len(self.shards))
        tally = Tally()
        for shard in self.shards:
            tally.merge(shard.tally)
        tally.merge(self.pending)  # rows after the last shard that were all left out
        dest = self.state.dest
        dest.put_bytes(CARD_KEY, render_card(self._card_facts(), tally).encode("utf-8"), "text/markdown")
        self.state.finish(self._stats(tally))
        self._report()
        return ExportResult(dest.root, len(self.shards), tally, resumed_shards=self.resumed)

    def _card_facts(self) -> CardFacts:
        spec_text = _saved_spec(self.source.sink)
        title = _spec_name(spec_text) or self.source.sink.root.rstrip("/").rsplit("/", 1)[-1]
        features = None
        if self.format.name == "hf":
            features = hf.card_features(hf.export_schema(self.source.schema, self.index is not None))
        return CardFacts(
            title=title,
            export_format=self.format.name,
            data_files=self.format.data_files,
            source=self.source.sink.root,
            created=datetime.now(UTC),
            generator=f"promptgrid {VERSION}",
            license=self.options.license,
            spec_text=spec_text,
            features=features,
        )

    def _stats(self, tally: Tally) -> dict[str, Any]:
        return {
            "format": self.format.name,
            "plan": self.options.plan(self.source),
            "source": self.source.sink.root,
            "generator": f"promptgrid {VERSION}",
            "completed_at": datetime.now(UTC).isoformat(),
            "shards": [{"key": s.key, "rows": s.rows, "bytes": s.bytes} for s in self.shards],
            "totals": tally.to_dict(),
        }


def _saved_spec(sink: Sink) -> str | None:
    try:
        return read_saved_spec(sink)
    except FileNotFoundError:
        return None


def _spec_name(text: str | None) -> str | None:
    if not text:
        return None
    with contextlib.suppress(yaml.YAMLError):
        data = yaml.safe_load(text)
        if isinstance(data, dict) and data.get("name"):
            return str(data["name"])
    return None


__all__ = ["FORMATS", "STATS_KEY", "ExportOptions", "ExportProgress", "ExportResult", "export_output"]
