"""An export's record of itself in the destination: the plan, one marker per finished shard, and the
stats written last, so an export resumes after an interruption and grows when the output grows.

    DEST/_promptgrid/export.json               the plan: format, filters, shard limits, splits
    DEST/_promptgrid/shards/train/00000.json   one per shard, written after the shard is published
    DEST/stats.json                            totals; written last, it says the export is complete

A marker names every job its shard handled (written, or left out as a near-duplicate or unreadable) with
the stamp of the row it took. A shard is kept while its file has the size the marker records and every
job in it still has that row as its latest; otherwise the shard goes (its file, sidecars and marker) and
its jobs are exported again with the rest. So an export of a grown output writes new shards only, and a
job re-run since keeps its latest row, once. A different plan (another filter, format or shard limit)
deletes the earlier export first: the destination never mixes two plans.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from promptgrid.export.staging import Staging
from promptgrid.export.tally import Tally
from promptgrid.output.sinks import Sink

STATE_PREFIX = "_promptgrid/"
PLAN_KEY = f"{STATE_PREFIX}export.json"
MARKERS_PREFIX = f"{STATE_PREFIX}shards/"
STATS_KEY = "stats.json"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class ShardRecord:
    """A published shard: where, how big, which jobs it handled, and what it holds."""

    split: str
    index: int
    key: str
    rows: int
    bytes: int
    num_bytes: int  # the rows' size as Arrow data: the card's `num_bytes`
    tally: Tally
    jobs: dict[str, str]  # job id -> stamp of the row taken, for every job the shard handled
    hashes: list[tuple[str, str]] = field(default_factory=list)  # (pHash, job id) of images kept
    extensions: list[str] = field(default_factory=list)  # image file extensions (WebDataset members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "index": self.index,
            "key": self.key,
            "rows": self.rows,
            "bytes": self.bytes,
            "num_bytes": self.num_bytes,
            "tally": self.tally.to_dict(),
            "jobs": self.jobs,
            "hashes": [list(pair) for pair in self.hashes],
            "extensions": self.extensions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardRecord:
        return cls(
            split=str(data["split"]),
            index=int(data["index"]),
            key=str(data["key"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            num_bytes=int(data["num_bytes"]),
            tally=Tally.from_dict(data["tally"]),
            jobs={str(job): str(stamp) for job, stamp in data["jobs"].items()},
            hashes=[(str(value), str(job)) for value, job in data["hashes"]],
            extensions=[str(extension) for extension in data.get("extensions", [])],
        )


@dataclass
class Resume:
    """Where an export starts: the shards kept, or the stats of an export already complete."""

    shards: list[ShardRecord] = field(default_factory=list)
    dropped: int = 0  # shards deleted because a job in them has a newer row
    complete: dict[str, Any] | None = None


@dataclass
class Survey:
    """A destination as found: an export complete under this plan, one to start afresh (`fresh`: another
    plan, or none), or the shards still current (`kept`) and those a newer row outdates (`stale`)."""

    complete: dict[str, Any] | None = None
    fresh: bool = False
    kept: list[ShardRecord] = field(default_factory=list)
    stale: list[ShardRecord] = field(default_factory=list)


def marker_key(split: str, index: int) -> str:
    return f"{MARKERS_PREFIX}{split}/{index:05d}.json"


class ExportState:
    """Reads and writes an export's plan, shard markers and stats in its destination."""

    def __init__(
        self,
        dest: Sink,
        staging: Staging,
        listing_prefix: str,
        is_shard_key: Callable[[str], bool],
        sidecars: Callable[[str], list[str]],
    ):
        self.dest, self.staging = dest, staging
        self.listing_prefix, self.is_shard_key, self.sidecars = listing_prefix, is_shard_key, sidecars

    def survey(self, plan: dict[str, Any], source: str, stamps: dict[str, str], restart: bool) -> Survey:
        """What is here, changing nothing: a complete export, or the shards to keep and those to drop."""
        stats = self._load(STATS_KEY)
        if not restart and stats is not None and stats.get("plan") == plan and stats.get("source") == source:
            return Survey(complete=stats)
        if restart or self._load(PLAN_KEY) != plan:
            return Survey(fresh=True, stale=self._markers())
        survey = Survey()
        for shard in self._markers():
            current = all(stamps.get(job) == stamp for job, stamp in shard.jobs.items())
            if current and self.staging.size_of(shard.key) == shard.bytes:
                survey.kept.append(shard)
            else:  # a job in it ran again (or its file is gone): its jobs are exported anew
                survey.stale.append(shard)
        return survey

    def begin(self, plan: dict[str, Any], source: str, stamps: dict[str, str], restart: bool) -> Resume:
        """Report an export already complete, keep the shards still current, or clear and start over."""
        survey = self.survey(plan, source, stamps, restart)
        if survey.complete is not None:
            return Resume(complete=survey.complete)
        if survey.fresh:
            self.clear()
            self.dest.put_bytes(PLAN_KEY, _dump(plan), JSON_TYPE)
            return Resume()
        self.dest.delete(STATS_KEY)  # from here until the end, nothing claims the export is complete
        for shard in survey.stale:
            self.drop(shard.split, shard.index, shard.key)
        return Resume(shards=survey.kept, dropped=len(survey.stale))

    def record(self, shard: ShardRecord) -> None:
        self.dest.put_bytes(marker_key(shard.split, shard.index), _dump(shard.to_dict()), JSON_TYPE)

    def finish(self, stats: dict[str, Any]) -> None:
        self.dest.put_bytes(STATS_KEY, _dump(stats), JSON_TYPE)

    def clear(self) -> None:
        """Delete every trace of an earlier export here: the stats first, so nothing claims completeness."""
        self.dest.delete(STATS_KEY)
        self.prune([])
        self.dest.delete(PLAN_KEY)

    def drop(self, split: str, index: int, key: str) -> None:
        self.dest.delete(marker_key(split, index))
        for name in (key, *self.sidecars(key)):
            self.dest.delete(name)

    def prune(self, keep: Iterable[ShardRecord]) -> None:
        """Delete every shard (with its sidecars) and marker but those of `keep`: leftovers of earlier
        exports, of shards written again, of a shard published just before an interruption."""
        shards = list(keep)
        markers = {marker_key(shard.split, shard.index) for shard in shards}
        kept = {shard.key for shard in shards}
        for key in list(self.dest.list_keys(MARKERS_PREFIX)):
            if key not in markers:
                self.dest.delete(key)
        for key in list(self.dest.list_keys(self.listing_prefix)):
            if self.is_shard_key(key) and key not in kept:
                for name in (key, *self.sidecars(key)):
                    self.dest.delete(name)

    def _markers(self) -> list[ShardRecord]:
        shards = []
        for key in sorted(self.dest.list_keys(MARKERS_PREFIX)):
            data = self._load(key)
            try:
                shards.append(ShardRecord.from_dict(data or {}))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # a damaged marker counts as none: its shard is written again
        return shards

    def _load(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.dest.get_bytes(key))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a damaged record counts as none: what it described is written again
        return data if isinstance(data, dict) else None


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
