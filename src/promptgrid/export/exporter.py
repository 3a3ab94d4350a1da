"""An export from start to finish: the manifest's rows streamed in batches, each row given its split, each
batch's images fetched and checked, written into its split's current shard, and every shard published
whole with its marker after it.

Memory holds one batch of manifest rows and one batch of images (at most `batch_rows` images or about
`batch_bytes`), never a shard: shards grow on disk and are published when they pass `shard_bytes` or
reach `samples_per_shard`. Rows a kept shard already holds (an earlier export of this output, or an
interrupted one) are passed over without fetching their images, so a grown output adds shards and leaves
the earlier ones as they were. The dataset card and `stats.json` come last; `stats.json` says the export
completed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from promptgrid.export import hf, wds
from promptgrid.export.card import CardFacts, SplitFacts, render_card, spec_name
from promptgrid.export.dedup import NearDuplicateIndex
from promptgrid.export.options import FORMATS, ExportOptions, Prepared, prepare
from promptgrid.export.privacy import Privacy
from promptgrid.export.samples import SampleBatch, SampleMaker
from promptgrid.export.source import image_ids, iter_batches
from promptgrid.export.staging import Staging
from promptgrid.export.state import STATS_KEY, ExportState, Resume, ShardRecord
from promptgrid.export.tally import Tally, parameter_columns
from promptgrid.output.scores import describe_scores, score_names
from promptgrid.output.sinks import open_sink
from promptgrid.version import VERSION

CARD_KEY = "README.md"
FETCH_THREADS = 8
READ_BATCH_ROWS = 1024


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
    resumed_shards: int = 0  # shards kept from an earlier (or interrupted) export of this output
    already_complete: bool = False
    dropped_shards: int = 0  # earlier shards written again: a job in them has a newer row
    splits: dict[str, int] = field(default_factory=dict)  # rows per split


def export_output(
    options: ExportOptions, on_progress: Callable[[ExportProgress], None] | None = None
) -> ExportResult:
    """Export OUTPUT to DEST, keeping the shards an earlier export of it left there that are still current."""
    prepared = prepare(options)
    dest = open_sink(options.dest)
    staging = Staging(dest)
    export_format = prepared.format
    try:
        state = ExportState(
            dest, staging, export_format.listing_prefix, export_format.is_shard_key, export_format.sidecars
        )
        folders = [f"{split}/" for split in prepared.rule.names(prepared.source.split_values)]
        staging.remove_leftovers([export_format.listing_prefix, *folders])
        plan = options.plan(prepared.rule)
        resume = state.begin(plan, prepared.source.fingerprint, prepared.source.stamps, options.restart)
        if resume.complete is not None:
            shards = len(resume.complete["shards"])
            tally = Tally.from_dict(resume.complete["totals"])
            splits = {name: facts["rows"] for name, facts in resume.complete.get("splits", {}).items()}
            return ExportResult(
                dest.root, shards, tally, resumed_shards=shards, already_complete=True, splits=splits
            )
        return ShardedExport(prepared, staging, state, resume, on_progress).run()
    finally:
        staging.close()


@dataclass
class OpenShard:
    index: int
    key: str
    path: Path
    handle: BinaryIO
    writer: hf.ParquetShard | wds.TarShard
    started: float
    rows: int = 0
    hashes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Lane:
    """One split's shards being written: the open one, and what was handled since the last one closed."""

    split: str
    used: set[int]
    current: OpenShard | None = None
    pending: Tally = field(default_factory=Tally)
    jobs: dict[str, str] = field(default_factory=dict)

    def next_index(self) -> int:
        index = next(n for n in range(len(self.used) + 1) if n not in self.used)
        self.used.add(index)
        return index


class ShardedExport:
    """One export's loop: rows in, shards out, markers after each shard, card and stats at the end."""

    def __init__(
        self,
        prepared: Prepared,
        staging: Staging,
        state: ExportState,
        resume: Resume,
        on_progress: Callable[[ExportProgress], None] | None,
    ):
        self.options, self.source, self.rule = prepared.options, prepared.source, prepared.rule
        self.format, self.spec_text = prepared.format, prepared.spec_text
        self.staging, self.state, self.on_progress = staging, state, on_progress
        self.shards = list(resume.shards)
        self.resumed, self.dropped = len(self.shards), resume.dropped
        self.done = pa.array(sorted({job for shard in self.shards for job in shard.jobs}), pa.string())
        self.privacy = Privacy.of(self.source.sink.root, self.options.keep_source_uris)
        self.lanes: dict[str, Lane] = {}
        self.examined = 0
        self.started = datetime.now(UTC)
        self.index: NearDuplicateIndex | None = None
        if self.options.dedup_distance is not None:
            self.index = NearDuplicateIndex(self.options.dedup_distance)
            for shard in self.shards:
                for value, job_id in shard.hashes:
                    self.index.add(int(value, 16), job_id)

    def run(self) -> ExportResult:
        parameters = parameter_columns(self.source.schema.names)
        parameters = [name for name in parameters if name not in score_names(self.source.scores)]
        try:
            with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
                self.maker = SampleMaker(self.source.sink, pool, parameters, self.index)
                for batch in iter_batches(self.source, self.options.where, READ_BATCH_ROWS):
                    self.examined += batch.examined
                    rows = self._not_done(batch.rows)
                    for split, part in _by_split(rows, self.rule.assign(rows)):
                        self._write_rows(self._lane(split), part)
                    self._report()
            for lane in self.lanes.values():
                if lane.current is not None:
                    self._finish_shard(lane)
        except BaseException:
            self._abandon_shards()
            raise
        return self._complete()

    def _not_done(self, rows: pa.Table) -> pa.Table:
        """Rows a kept shard already handled are passed over without fetching their images."""
        if not len(self.done):
            return rows
        return rows.filter(pc.invert(pc.is_in(pa.array(image_ids(rows), pa.string()), value_set=self.done)))

    def _lane(self, split: str) -> Lane:
        if split not in self.lanes:
            used = {shard.index for shard in self.shards if shard.split == split}
            self.lanes[split] = Lane(split, used)
        return self.lanes[split]

    def _write_rows(self, lane: Lane, rows: pa.Table) -> None:
        """Batches of at most `batch_rows` images, about `batch_bytes` (by the manifest's sizes), and never
        more than the current shard has room for, so a shard ends exactly at `samples_per_shard`."""
        sizes = rows["bytes"].to_pylist() if "bytes" in rows.column_names else [0] * rows.num_rows
        start = 0
        while start < rows.num_rows:
            room = self.options.batch_rows
            if self.options.samples_per_shard is not None:
                room = min(room, self.options.samples_per_shard - (lane.current.rows if lane.current else 0))
            end, total = start, 0
            while end < rows.num_rows and end - start < room and total < self.options.batch_bytes:
                total += sizes[end] or 0
                end += 1
            self._write(lane, rows.slice(start, end - start))
            start = end

    def _write(self, lane: Lane, chunk: pa.Table) -> None:
        batch = self.maker.make(chunk, lane.pending)
        lane.jobs.update({image: self.source.stamps[image] for image in image_ids(chunk)})
        if not batch.samples:
            return
        shard = lane.current or self._open_shard(lane)
        public = self.privacy.rows(batch.rows, [sample.file_name for sample in batch.samples])
        shard.writer.write(SampleBatch(public, batch.samples))
        shard.rows += batch.rows.num_rows
        jobs = image_ids(batch.rows)
        shard.hashes += [(s.phash, str(job)) for s, job in zip(batch.samples, jobs, strict=True) if s.phash]
        full = self.options.samples_per_shard is not None and shard.rows >= self.options.samples_per_shard
        if full or shard.writer.size() >= self.options.shard_bytes:
            self._finish_shard(lane)

    def _open_shard(self, lane: Lane) -> OpenShard:
        index = lane.next_index()
        key = self.format.shard_key(lane.split, index)
        path = self.staging.new_file(key)
        handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by _finish_shard or _abandon_shards
        writer: hf.ParquetShard | wds.TarShard
        if self.format.name == "hf":
            schema = self.privacy.schema(self.source.schema)
            writer = hf.ParquetShard(handle, schema, self.index is not None)
        else:
            writer = wds.TarShard(handle, mtime=self.started.timestamp())
        lane.current = OpenShard(index, key, path, handle, writer, time.monotonic())
        return lane.current

    def _finish_shard(self, lane: Lane) -> None:
        shard = lane.current
        assert shard is not None
        shard.writer.close()
        shard.handle.close()
        size = shard.path.stat().st_size
        self.staging.publish(shard.path, shard.key, self.format.content_type)
        for key, data, content_type in shard.writer.sidecars(
            shard.key, lane.pending, time.monotonic() - shard.started
        ):
            self.state.dest.put_bytes(key, data, content_type)
        record = ShardRecord(
            lane.split, shard.index, shard.key, shard.rows, size, shard.writer.num_bytes,
            lane.pending, lane.jobs, shard.hashes, sorted(shard.writer.extensions),
        )  # fmt: skip
        self.state.record(record)
        self.shards.append(record)
        lane.pending, lane.jobs, lane.current = Tally(), {}, None

    def _abandon_shards(self) -> None:
        # An unfinished shard never reaches its final name: its temporary file goes.
        for lane in self.lanes.values():
            if lane.current is not None:
                with contextlib.suppress(Exception):
                    lane.current.writer.close()  # before its file: a writer finalised later would write to it
                with contextlib.suppress(Exception):
                    lane.current.handle.close()
                self.staging.discard(lane.current.path)
                lane.current = None

    def _report(self) -> None:
        if self.on_progress is not None:
            open_rows = sum(lane.current.rows for lane in self.lanes.values() if lane.current)
            written = sum(shard.rows for shard in self.shards) + open_rows
            size = sum(shard.bytes for shard in self.shards)
            self.on_progress(
                ExportProgress(self.examined, self.source.total, written, len(self.shards), size)
            )

    def _complete(self) -> ExportResult:
        self.state.prune(self.shards)
        tally = Tally()
        for shard in self.shards:
            tally.merge(shard.tally)
        for lane in self.lanes.values():
            tally.merge(lane.pending)  # rows after a split's last shard that were all left out
        splits = self._splits()
        dest = self.state.dest
        card = render_card(self._card_facts(splits), tally)
        dest.put_bytes(CARD_KEY, card.encode("utf-8"), "text/markdown")
        self.state.finish(self._stats(tally, splits))
        self._report()
        return ExportResult(
            dest.root, len(self.shards), tally, resumed_shards=self.resumed, dropped_shards=self.dropped,
            splits={split.name: split.rows for split in splits},
        )  # fmt: skip

    def _splits(self) -> list[SplitFacts]:
        found: dict[str, SplitFacts] = {}
        for shard in sorted(self.shards, key=lambda shard: (shard.split, shard.index)):
            facts = found.setdefault(
                shard.split, SplitFacts(shard.split, self.format.data_files(shard.split))
            )
            facts.rows += shard.rows
            facts.num_bytes += shard.num_bytes
            facts.download_bytes += shard.bytes
        names = self.rule.names(found)
        return [found[name] for name in names if name in found]

    def _card_facts(self, splits: list[SplitFacts]) -> CardFacts:
        title = spec_name(self.spec_text) or self.source.sink.root.rstrip("/").rsplit("/", 1)[-1]
        schema = self.privacy.schema(self.source.schema)
        if self.format.name == "hf":
            features = hf.card_features(hf.export_schema(schema, self.index is not None))
        else:
            extensions = {extension for shard in self.shards for extension in shard.extensions}
            features = wds.card_features(schema, extensions, self.index is not None)
        return CardFacts(
            title=title,
            export_format=self.format.name,
            splits=splits,
            created=datetime.now(UTC),
            generator=f"promptgrid {VERSION}",
            license=self.options.license,
            spec_text=self.privacy.text(self.spec_text) if self.spec_text else None,
            features=features,
            from_sandbox=self.source.from_sandbox,
            split_shares=self.rule.shares,
            scores=describe_scores(self.source.scores),
        )

    def _stats(self, tally: Tally, splits: list[SplitFacts]) -> dict[str, Any]:
        return {
            "format": self.format.name,
            "plan": self.options.plan(self.rule),
            "source": self.source.fingerprint,  # the manifest parts exported: never where they are
            "generator": f"promptgrid {VERSION}",
            "completed_at": datetime.now(UTC).isoformat(),
            "from_sandbox": self.source.from_sandbox,
            "splits": {s.name: {"rows": s.rows, "num_bytes": s.num_bytes} for s in splits},
            "shards": [
                {"split": s.split, "key": s.key, "rows": s.rows, "bytes": s.bytes}
                for s in sorted(self.shards, key=lambda shard: (shard.split, shard.index))
            ],
            "totals": tally.to_dict(),
        }


def _by_split(rows: pa.Table, splits: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """The rows of each split, in their order, splits in the order they first appear."""
    if len(set(splits)) <= 1:
        if rows.num_rows:
            yield splits[0], rows
        return
    positions: dict[str, list[int]] = {}
    for position, split in enumerate(splits):
        positions.setdefault(split, []).append(position)
    for split, taken in positions.items():
        yield split, rows.take(pa.array(taken, pa.int64()))


__all__ = [
    "FORMATS",
    "STATS_KEY",
    "ExportOptions",
    "ExportProgress",
    "ExportResult",
    "export_output",
    "prepare",
]
