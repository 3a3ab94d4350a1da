"""Which jobs a backfill runs again: the manifest's latest rows picked by status and SQL, made jobs again
(the backfill flow's `select-backfill` task and the backfill's dry run both ask here, without Prefect).

The jobs come back from the manifest rows themselves (model, inputs, carried columns, job id), so a backfill
needs only the output: not the grid, which may have moved. The API settings come from the spec saved there.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import yaml

from promptgrid.defaults import MODEL_VERSION
from promptgrid.engine.estimate import count_images, estimate_run, format_duration
from promptgrid.errors import InvalidInput
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.rows import INPUT_COLUMNS
from promptgrid.output.saved_spec import read_saved_spec
from promptgrid.output.scores import with_scores
from promptgrid.output.sinks import open_sink
from promptgrid.spec.schema import ApiConfig
from promptgrid.types import ErrorCode, Job, JobStatus

_QUOTED_CODE = re.compile(r"'([A-Z][A-Z0-9_]{3,})'")

# Every job whose latest row is not a success: failed, timed out or cancelled alike.
DEFAULT_STATUSES = tuple(status.value for status in JobStatus if status is not JobStatus.SUCCESS)
LISTED_JOBS = 20  # a dry run lists this many jobs, then counts the rest


def unknown_error_codes(where: str | None) -> list[str]:
    """Quoted code-like words in a `--where` that no ErrorCode names: probably misspelt, matching nothing."""
    known = {code.value for code in ErrorCode}
    return sorted({word for word in _QUOTED_CODE.findall(where or "") if word not in known})


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
    rows = select_rows(with_scores(read_manifest(sink), sink), statuses, where).to_pylist()
    # A `num_images` job has a row per image: it runs again once.
    return text, list({row["job_id"]: job_from_row(row) for row in rows}.values())


def job_from_row(row: dict[str, Any]) -> Job:
    """The job a manifest row records: its inputs exactly as sent (`inputs`), or, in a manifest written before
    that column, the typed input columns."""
    if row.get("inputs"):
        inputs = json.loads(row["inputs"])
    else:
        inputs = {name: row[name] for name in INPUT_COLUMNS if row.get(name) is not None}
    carried = json.loads(row["carried"]) if row.get("carried") else {}
    variables = json.loads(row["variables"]) if row.get("variables") else {}
    version = row.get("version") or MODEL_VERSION
    return Job(row["job_id"], row["model"], inputs, version, carried, variables, row.get("template"))


def saved_api_config(text: str, overrides: dict[str, Any]) -> ApiConfig:
    api = dict((yaml.safe_load(text) or {}).get("api") or {})
    api.update(
        {key.removeprefix("api."): value for key, value in overrides.items() if key.startswith("api.")}
    )
    return ApiConfig.model_validate(api)


def describe_backfill(output: str, jobs: list[Job], api: ApiConfig, price_per_image: float) -> str:
    """A backfill's dry run: which jobs would run again, and the requests, time and cost; nothing is sent."""
    estimate = estimate_run(len(jobs), api, price_per_image, images=count_images(jobs))
    lines = [
        f"backfill of {output}: {len(jobs)} jobs would run again",
        f"API requests: ~{estimate.requests} ({estimate.creates} creates); time: "
        f"~{format_duration(estimate.seconds)} at rate limit {api.rate_limit} and {api.max_concurrent} "
        "in flight",
        f"cost: ${estimate.cost_usd:,.2f} at ${price_per_image:g} per image",
    ]
    for job in jobs[:LISTED_JOBS]:
        prompt = str(job.inputs.get("prompt", ""))
        prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        seed = f"  seed={job.inputs['seed']}" if "seed" in job.inputs else ""
        lines.append(f"  {job.job_id}  {job.model}{seed}  prompt={prompt!r}")
    if len(jobs) > LISTED_JOBS:
        lines.append(f"  … and {len(jobs) - LISTED_JOBS} more")
    lines.append("dry run: nothing was sent to the API.")
    return "\n".join(lines)
