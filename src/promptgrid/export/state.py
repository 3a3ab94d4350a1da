"""An export's record of itself in the destination: the plan, one marker per finished shard, and the
stats written last, so an interrupted export resumes (or, when anything changed, restarts) cleanly.

    DEST/_promptgrid/export.json         the plan: format, source fingerprint, filters, shard size
    DEST/_promptgrid/shards/00000.json   one per shard, written after the shard is published
    DEST/stats.json                      totals; written last, it says the export is complete

A shard counts only when its marker exists and the published file has the size the marker records; a
shard without one (the process died between the two) is written again. Resuming under a different plan
(the manifest gained rows, another filter) deletes the earlier shards first: the destination never
mixes two exports.
"""

from __future__ import annotations

import json
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
    """A published shard: where, how big, how far into the row stream it reaches, and what it holds."""

    index: int
    key: str
    rows: int
    bytes: int
    consumed: int  # rows of the filtered stream handled up to the end of this shard
    tally: Tally
    hashes: list[tuple[str, str]] = field(default_factory=list)  # (pHash, job id) of images kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "rows": self.rows,
            "bytes": self.bytes,
            "consumed": self.consumed,
            "tally": self.tally.to_dict(),
            "hashes": [list(pair) for pair in self.hashes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardRecord:
        return cls(
            index=int(data["index"]),
            key=str(data["key"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            consumed=int(data["consumed"]),
            tally=Tally.from_dict(data["tally"]),
            hashes=[(str(value), str(job)) for value, job in data["hashes"]],
        )


@dataclass
class Resume:
    """Where an export starts: the shards already done, or the stats of an export already complete."""

    shards: list[ShardRecord] = field(default_factory=list)
    complete: dict[str, Any] | None = None

    @property
    def consumed(self) -> int:
        return self.shards[-1].consumed if self.shards else 0


def marker_key(index: int) -> str:
    return f"{MARKERS_PREFIX}{index:05d}.json"


class ExportState:
    """Reads and writes an export's plan, shard markers and stats in its destination."""

    def __init__(self, dest: Sink, staging: Staging, listing_prefix: str, is_shard_key: Any):
        self.dest, self.staging = dest, staging
        self.listing_prefix, self.is_shard_key = listing_prefix, is_shard_key

    def begin(self, plan: dict[str, Any], restart: bool) -> Resume:
        """Resume what the same plan left, report an export already complete, or clear and start over."""
        stats = self._load(STATS_KEY)
        if not restart and stats is not None and stats.get("plan") == plan:
            return Resume(complete=stats)
        if not restart and self._load(PLAN_KEY) == plan:
            self.dest.delete(STATS_KEY)
            return Resume(shards=self._finished_shards())
        self.clear()
        self.dest.put_bytes(PLAN_KEY, _dump(plan), JSON_TYPE)
        return Resume()

    def record(self, shard: ShardRecord) -> None:
        self.dest.put_bytes(marker_key(shard.index), _dump(shard.to_dict()), JSON_TYPE)

    def finish(self, stats: dict[str, Any]) -> None:
        self.dest.put_bytes(STATS_KEY, _dump(stats), JSON_TYPE)

    def clear(self) -> None:
        """Delete every trace of an earlier export here: the stats first, so nothing claims completeness."""
        self.dest.delete(STATS_KEY)
        self.remove_from(0)
        self.dest.delete(PLAN_KEY)

    def remove_from(self, index: int) -> None:
        """Delete the shards and markers numbered `index` and up (left by a larger or earlier export)."""
        for key in list(self.dest.list_keys(MARKERS_PREFIX)):
            number = key.removeprefix(MARKERS_PREFIX).removesuffix(".json")
            if number.isdigit() and int(number) >= index:
                self.dest.delete(key)
        for key in list(self.dest.list_keys(self.listing_prefix)):
            digits = "".join(ch for ch in key.rsplit("/", 1)[-1] if ch.isdigit())
            if self.is_shard_key(key) and int(digits) >= index:
                self.dest.delete(key)

    def _finished_shards(self) -> list[ShardRecord]:
        shards: list[ShardRecord] = []
        while (data := self._load(marker_key(len(shards)))) is not None:
            shard = ShardRecord.from_dict(data)
            if self.staging.size_of(shard.key) != shard.bytes:
                break  # the marker outlived its shard (deleted, or replaced by hand): write it again
            shards.append(shard)
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
