"""The backfill flow: run again the jobs of an output whose latest outcome matches, e.g. failed or timed out.

The jobs come back from the manifest rows themselves (model, inputs, carried columns, job id), so a backfill
needs only the output: not the grid, which may have moved. The API settings come from the spec saved there.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import yaml
from prefect import flow

from promptgrid.errors import InvalidInput
from promptgrid.flows.generate import current_run_id
from promptgrid.flows.pipeline import RunPlan, Selection, run_plan
from promptgrid.tasks.models.catalog import INPUT_NAMES
from promptgrid.tasks.output.manifest.read import provenance, read_manifest
from promptgrid.tasks.output.saved_spec import read_saved_spec
from promptgrid.tasks.output.sinks import open_sink
from promptgrid.tasks.spec.overrides import spec_overrides
from promptgrid.tasks.spec.schema import ApiConfig
from promptgrid.types import Job, JobStatus

DEFAULT_STATUSES = ("failed", "timed_out")


def select_rows(table: pa.Table, statuses: list[str], where: str | None) -> pa.Table:
    """The latest rows whose status is one of `statuses` and, if given, that match the SQL `where`."""
    unknown = sorted(set(statuses) - {status.value for status in JobStatus})
    if unknown:
        allowed = ", ".join(status.value for status in JobStatus)
        raise InvalidInput([f"--status: unknown status {', '.join(unknown)}; allowed: {allowed}"])
    import duckdb

    # The statuses were checked against JobStatus above, so quoting them inline is safe.
    condition = f"status IN ({', '.join(repr(status) for status in statuses)})"
    sql = f"SELECT * FROM manifest WHERE {condition}" + (f" AND ({where})" if where else "")
    with duckdb.connect() as db:
        db.register("manifest", table)
        try:
            return db.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise InvalidInput([f"--where {where!r}: {exc}"]) from None


def jobs_to_backfill(output: str, statuses: list[str], where: str | None) -> tuple[str, list[Job]]:
    """The saved spec's text and the jobs to run again; InvalidInput when the output or filters are bad."""
    sink = open_sink(output)
    try:
        text = read_saved_spec(sink)
    except FileNotFoundError:
        raise InvalidInput([f"{output}: no spec.yaml here; is this a promptgrid run's output?"]) from None
    rows = select_rows(read_manifest(sink), statuses, where).to_pylist()
    return text, [job_from_row(row) for row in rows]


def job_from_row(row: dict[str, Any]) -> Job:
    inputs = {name: row[name] for name in INPUT_NAMES if row.get(name) is not None}
    carried = json.loads(row["carried"]) if row.get("carried") else {}
    return Job(row["job_id"], row["model"], inputs, row.get("version") or "0.0.1", carried)


def saved_api_config(text: str, overrides: dict[str, Any]) -> ApiConfig:
    api = dict((yaml.safe_load(text) or {}).get("api") or {})
    api.update(
        {key.removeprefix("api."): value for key, value in overrides.items() if key.startswith("api.")}
    )
    return ApiConfig.model_validate(api)


@flow(name="backfill")
async def backfill(
    output: str,
    statuses: list[str] | None = None,
    where: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    price_per_image: float = 0.065,
    time_scale: float = 1.0,
) -> dict[str, Any]:
    """Re-run the jobs in `output` whose latest status is in `statuses` (and that match `where`, SQL)."""
    text, jobs = jobs_to_backfill(output, list(statuses or DEFAULT_STATUSES), where)
    api = saved_api_config(text, spec_overrides(None, api_base, rate_limit, max_concurrent))
    spec_hash = provenance(open_sink(output)).get("promptgrid.spec_hash", "")
    plan = RunPlan(api, output, text, spec_hash, lambda: [jobs])
    selection = Selection(rerun=frozenset(job.job_id for job in jobs))
    return await run_plan(
        plan, selection, price_per_image=price_per_image, time_scale=time_scale, run_id=current_run_id()
    )
