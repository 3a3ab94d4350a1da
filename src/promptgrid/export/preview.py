"""`promptgrid export --dry-run`: what an export would write, found without writing or fetching anything.

It makes every check an export makes (statuses, `--where`, splits, sandbox renders), reads the
destination's record of an earlier export, and reads the manifest's rows (never their images) to count,
per split, the rows an export would add.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from promptgrid.export.options import ExportOptions, prepare
from promptgrid.export.source import image_ids, iter_batches
from promptgrid.export.staging import Staging
from promptgrid.export.state import ExportState
from promptgrid.output.sinks import open_sink

READ_BATCH_ROWS = 4096


@dataclass
class ExportPreview:
    """What an export would do: nothing (complete), or add rows per split, keeping and dropping shards."""

    complete: bool = False
    fresh: bool = False  # no earlier export under this plan: everything is written anew
    kept_shards: int = 0
    kept_rows: int = 0
    dropped_shards: int = 0
    new_rows: Counter[str] = field(default_factory=Counter)  # split -> rows to examine and write
    from_sandbox: bool = False


def preview_export(options: ExportOptions) -> ExportPreview:
    prepared = prepare(options)
    source, export_format = prepared.source, prepared.format
    dest = open_sink(options.dest)
    staging = Staging(dest)
    try:
        state = ExportState(
            dest, staging, export_format.listing_prefix, export_format.is_shard_key, export_format.sidecars
        )
        plan = options.plan(prepared.rule)
        survey = state.survey(plan, source.fingerprint, source.stamps, options.restart)
    finally:
        staging.close()
    preview = ExportPreview(
        complete=survey.complete is not None,
        fresh=survey.fresh,
        kept_shards=len(survey.kept),
        kept_rows=sum(shard.rows for shard in survey.kept),
        dropped_shards=len(survey.stale) if not survey.fresh else 0,
        from_sandbox=source.from_sandbox,
    )
    if preview.complete:
        return preview
    done = pa.array(sorted({job for shard in survey.kept for job in shard.jobs}), pa.string())
    for batch in iter_batches(source, options.where, READ_BATCH_ROWS):
        ids = pa.array(image_ids(batch.rows), pa.string())
        rows = batch.rows.filter(pc.invert(pc.is_in(ids, value_set=done)))
        preview.new_rows.update(prepared.rule.assign(rows))
    return preview
