"""What an export is asked to do, and the checks made before anything is written: the format's layout,
the options (the CLI's flags), and the source, split rule and spec they resolve to.

A sandbox run's images are placeholder renders: they are refused unless asked for, so they never reach
the Hub as data by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promptgrid.errors import InvalidInput
from promptgrid.export import hf, wds
from promptgrid.export.card import saved_spec
from promptgrid.export.source import ManifestSource, check_where, open_source
from promptgrid.export.splits import SplitRule, check_split_values, split_rule
from promptgrid.output.sinks import open_sink

LAYOUT_VERSION = 2


@dataclass(frozen=True)
class ExportFormat:
    """Where a format's shards live, what they are called, and what files go beside each."""

    name: str
    shard_key: Callable[[str, int], str]
    is_shard_key: Callable[[str], bool]
    sidecars: Callable[[str], list[str]]
    listing_prefix: str
    data_files: Callable[[str], str]
    content_type: str


FORMATS = {
    "hf": ExportFormat(
        "hf", hf.shard_key, hf.is_shard_key, lambda key: [], hf.DATA_PREFIX, hf.data_files, hf.CONTENT_TYPE
    ),
    "webdataset": ExportFormat(
        "webdataset", wds.shard_key, wds.is_shard_key, wds.sidecar_keys, "", wds.data_files, wds.CONTENT_TYPE
    ),
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
    samples_per_shard: int | None = None  # None: shards are cut by size only
    dedup_distance: int | None = None  # None: no near-duplicate check
    license: str | None = None
    restart: bool = False
    include_sandbox: bool = False  # export a sandbox run's placeholder renders (the card says so)
    keep_source_uris: bool = False  # keep `image_uri` and the output's location as the manifest has them
    batch_rows: int = 100
    batch_bytes: int = 32 * 2**20

    def plan(self, rule: SplitRule) -> dict[str, Any]:
        """What decides the shards' content: kept shards must have been written under the same plan."""
        return {
            "layout": LAYOUT_VERSION,
            "format": self.format,
            "statuses": sorted(self.statuses),
            "where": self.where,
            "shard_bytes": self.shard_bytes,
            "samples_per_shard": self.samples_per_shard,
            "dedup_distance": self.dedup_distance,
            "keep_source_uris": self.keep_source_uris,
            "split_shares": [list(pair) for pair in rule.shares],
            "batch_rows": self.batch_rows,
            "batch_bytes": self.batch_bytes,
        }


@dataclass(frozen=True)
class Prepared:
    """An export checked and ready to write: its source, split rule, spec text and format."""

    options: ExportOptions
    source: ManifestSource
    rule: SplitRule
    spec_text: str | None
    format: ExportFormat


def prepare(options: ExportOptions) -> Prepared:
    """Check everything an export needs before anything is written; InvalidInput says what is wrong."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown export format {options.format!r}")
    if options.samples_per_shard is not None and options.samples_per_shard < 1:
        raise InvalidInput([f"--samples-per-shard {options.samples_per_shard}: a shard holds at least 1"])
    source = open_source(open_sink(options.output), list(options.statuses))
    check_where(source.schema, options.where)
    if source.from_sandbox and not options.include_sandbox:
        raise InvalidInput(
            [
                f"{options.output}: its images are placeholder renders from promptgrid's sandbox, not a "
                "model's; export them with --include-sandbox (the card then says so)"
            ]
        )
    spec_text = saved_spec(source.sink)
    rule = split_rule(spec_text, f"{options.output}: spec.yaml")
    check_split_values(source.split_values, f"{options.output}: manifest")
    return Prepared(options, source, rule, spec_text, FORMATS[options.format])
