"""The `promptgrid status` command: what state an output is in, for a person or (`--json`) a script.

Jobs by latest status, images, cost in total and today (UTC), the runs that wrote it (from their records in
`runs/`, else from the manifest's `run_id` column), who holds its lease, errors by code with one example
each, and the state of exports named with `--export`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from promptgrid.defaults import PRICE_PER_IMAGE_USD

if TYPE_CHECKING:
    from promptgrid.output.sinks.base import Sink

Status = dict[str, Any]
_ROW_COLUMNS = [
    *("run_id", "job_id", "status", "error_code", "error_message", "prediction_id"),
    *("queued_at", "completed_at", "cost_usd", "bytes"),
]
RUNS_SHOWN = 10  # the latest runs in the text; --json lists every one


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status_command(
        output: Annotated[str, typer.Argument(help="The output: a local folder or s3://bucket/prefix.")],
        export: Annotated[
            list[str] | None,
            typer.Option(help="An export's destination to report on (repeatable): complete, and up to date?"),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")] = False,
        price_per_image: Annotated[
            float, typer.Option(help="USD per image, for images whose cost the API did not report.")
        ] = PRICE_PER_IMAGE_USD,
    ) -> None:
        """Jobs by status, images, cost (total and today, UTC), runs, lease, errors by code, exports."""
        from promptgrid.output.sinks import open_sink

        status = output_status(open_sink(output), exports=export or [], price_per_image=price_per_image)
        typer.echo(json.dumps(status, indent=1, default=str) if as_json else "\n".join(describe(status)))


def output_status(
    sink: Sink,
    *,
    exports: Sequence[str] = (),
    price_per_image: float = PRICE_PER_IMAGE_USD,
    now: datetime | None = None,
) -> Status:
    """Everything `status` reports about one output, as plain JSON-ready data."""
    from promptgrid.errors import InvalidInput
    from promptgrid.output.manifest.read import latest_rows, part_keys, provenance, read_parts
    from promptgrid.output.run_log import read_runs

    now = now or datetime.now(UTC)
    parts = part_keys(sink)
    records = read_runs(sink)
    leases = lease_state(sink, now)
    if not parts and not records and not leases:
        raise InvalidInput([f"{sink.root}: no promptgrid output here (no manifest, run records or lease)"])
    table = read_parts(sink, columns=_ROW_COLUMNS)
    rows = table.to_pylist()
    latest = latest_rows(table).to_pylist()
    api_base = provenance(sink).get("promptgrid.api_base")
    return {
        "output": sink.root,
        "manifest_parts": len(parts),
        "jobs": dict(Counter(str(row["status"]) for row in latest).most_common()),
        "images": _images(latest),
        "cost": _cost(rows, price_per_image, now.date(), api_base),
        "runs": _runs(rows, records, leases),
        "lease": leases,
        "errors": _errors(latest),
        "exports": [export_state(sink, dest) for dest in exports],
    }


def _images(latest: list[dict[str, Any]]) -> Status:
    images = [row for row in latest if row["status"] == "success"]
    return {"count": len(images), "bytes": sum(row["bytes"] or 0 for row in images)}


def _cost(rows: list[dict[str, Any]], price: float, today: date, api_base: str | None) -> Status:
    """Billed cost of every prediction (retries too), each counted once; images without one estimated."""
    from promptgrid.locations import is_loopback_url

    total = on_day = 0.0
    estimated = 0
    seen: set[tuple[str, str]] = set()
    for row in rows:
        cost = row["cost_usd"]
        if cost is None and row["status"] == "success":
            cost, estimated = price, estimated + 1
        key = (str(row["job_id"]), str(row["prediction_id"]))
        if cost is None or (row["prediction_id"] and key in seen):
            continue  # a row rebuilt for a prediction already counted (repair, compaction) costs nothing
        seen.add(key)
        total += cost
        if row["completed_at"] is not None and row["completed_at"].astimezone(UTC).date() == today:
            on_day += cost
    return {
        "total_usd": round(total, 4),
        "today_usd": round(on_day, 4),
        "today": today.isoformat(),
        "estimated_images": estimated,  # images without a billed cost, counted at --price-per-image
        "sandbox": is_loopback_url(api_base),  # made-up figures: nothing was billed
    }


def _runs(rows: list[dict[str, Any]], records: list[Any], leases: list[Status]) -> list[Status]:
    """One entry per run: its record (start, end, outcome, host) and what its manifest rows say."""
    from_rows: dict[str, Status] = {}
    for row in rows:
        run = from_rows.setdefault(str(row["run_id"]), {"rows": 0, "statuses": Counter(), "first": None})
        run["rows"] += 1
        run["statuses"][row["status"]] += 1
        for name, pick in (("first", min), ("last", max)):
            stamp = row["queued_at"] if name == "first" else row["completed_at"]
            if stamp is not None:
                run[name] = stamp if run.get(name) is None else pick(run[name], stamp)
    holders = {lease["run_id"] for lease in leases if lease["live"]}
    runs = []
    for record in records:
        seen = from_rows.pop(record.run_id, None) or {}
        outcome = record.outcome or ("running" if record.run_id in holders else "no end recorded (died?)")
        runs.append(_run(record.run_id, record.started_at, record.ended_at, outcome, record.host, seen))
        runs[-1].update(shard=record.shard, message=record.message, pid=record.pid, version=record.version)
    for run_id, seen in from_rows.items():  # runs from before run records, or whose record is gone
        outcome = "running" if run_id in holders else "unrecorded"
        runs.append(_run(run_id, seen["first"], seen.get("last"), outcome, None, seen))
    return sorted(runs, key=lambda run: str(run["started_at"] or ""))


def _run(run_id: str, start: Any, end: Any, outcome: str, host: str | None, seen: Status) -> Status:
    return {
        "run_id": run_id,
        "started_at": start.isoformat() if start else None,
        "ended_at": end.isoformat() if end else None,
        "outcome": outcome,
        "host": host,
        "rows": seen.get("rows", 0),
        "statuses": dict(seen.get("statuses", {})),
    }


def lease_state(sink: Sink, now: datetime) -> list[Status]:
    """Each lease of the output: who holds it, since and until when, and whether that holder still lives."""
    from promptgrid.output.lease import Holder
    from promptgrid.output.lease_stores import lease_store

    store, leases = lease_store(sink), []
    for name in store.names():
        found = store.read(name)
        holder = Holder.from_json(found[0]) if found else None
        if holder is None:
            continue
        leases.append(
            {
                "lease": name,
                "run_id": holder.run_id,
                "host": holder.host,
                "pid": holder.pid,
                "since": holder.started_at.isoformat(),
                "expires_at": holder.expires_at.isoformat(),
                "live": not holder.gone(now),
                "holder": holder.describe(now),
            }
        )
    return leases


def _errors(latest: list[dict[str, Any]]) -> list[Status]:
    """Jobs whose latest row is not a success, by error code, with the first such job as an example."""
    by_code: dict[str, Status] = {}
    for row in latest:
        if row["status"] == "success":
            continue
        code = str(row["error_code"] or row["status"])
        entry = by_code.setdefault(
            code, {"code": code, "jobs": 0, "example_job": row["job_id"], "example": row["error_message"]}
        )
        entry["jobs"] += 1
    return sorted(by_code.values(), key=lambda entry: (-entry["jobs"], entry["code"]))


def export_state(sink: Sink, dest: str) -> Status:
    """An export's progress from its markers (export/state.py): complete, shards done, current or stale."""
    from promptgrid.errors import InvalidInput
    from promptgrid.export.source import open_source
    from promptgrid.export.state import MARKERS_PREFIX, PLAN_KEY, STATS_KEY
    from promptgrid.output.sinks import open_sink

    target = open_sink(dest)
    stats, plan = _json(target, STATS_KEY), _json(target, PLAN_KEY)
    plan = (stats or {}).get("plan") or plan
    if plan is None:
        return {"dest": target.root, "state": "none", "shards": 0}
    markers = [key for key in target.list_keys(MARKERS_PREFIX) if key.endswith(".json")]
    try:
        current = open_source(sink, list(plan.get("statuses") or ["success"])).fingerprint
    except InvalidInput:
        current = None
    return {
        "dest": target.root,
        "state": "complete" if stats is not None else "unfinished",
        "format": plan.get("format"),
        "shards": len(stats.get("shards") or []) if stats else len(markers),
        "rows": stats["totals"].get("rows") if stats and isinstance(stats.get("totals"), dict) else None,
        # the manifest had no new parts since: stats.json names the parts it exported (their fingerprint)
        "up_to_date": (stats or {}).get("source", plan.get("source")) == current,
    }


def _json(sink: Sink, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(sink.get_bytes(key))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(status: Status) -> list[str]:
    """The status as lines for a person."""
    jobs = status["jobs"]
    by_status = ", ".join(f"{name} {count}" for name, count in jobs.items()) or "none"
    images, cost = status["images"], status["cost"]
    lines = [
        f"output: {status['output']} ({status['manifest_parts']} manifest parts)",
        f"jobs: {sum(jobs.values())} ({by_status}), by each job's latest row",
        f"images: {images['count']}, {images['bytes'] / 2**20:.1f} MiB",
        f"cost: ${cost['total_usd']:.2f} in total, ${cost['today_usd']:.2f} today ({cost['today']} UTC)"
        + _cost_note(cost),
    ]
    lines += _describe_runs(status["runs"])
    held = [lease for lease in status["lease"] if lease["live"]]
    lines += [f"lease {lease['lease']}: held by {lease['holder']}" for lease in held] or ["lease: free"]
    lines += [
        f"lease {lease['lease']}: left by {lease['holder']}, who is gone (the next run takes it over)"
        for lease in status["lease"]
        if not lease["live"]
    ]
    lines.append("errors: none" if not status["errors"] else "errors by code:")
    for error in status["errors"]:
        example = (error["example"] or "").replace("\n", " ")[:120]
        lines.append(f"  {error['code']:<24} {error['jobs']:>6}  e.g. job {error['example_job']}: {example}")
    lines += _describe_exports(status["exports"])
    return lines


def _cost_note(cost: Status) -> str:
    if cost["sandbox"]:
        return "; sandbox figures: nothing was billed"
    if cost["estimated_images"]:
        return f"; {cost['estimated_images']} images without a billed cost counted at --price-per-image"
    return ""


def _describe_runs(runs: list[Status]) -> list[str]:
    if not runs:
        return ["runs: none recorded"]
    lines = [f"runs: {len(runs)}" + (f" (the latest {RUNS_SHOWN} shown)" if len(runs) > RUNS_SHOWN else "")]
    for run in runs[-RUNS_SHOWN:]:
        span = f"{_when(run['started_at'])} → {_when(run['ended_at']) or '…'}"
        counts = ", ".join(f"{name} {count}" for name, count in sorted(run["statuses"].items())) or "no rows"
        host = f" on {run['host']}" if run["host"] else ""
        said = f": {run['message'][:100]}" if run.get("message") else ""
        lines.append(f"  {run['run_id']:<14} {span}  {run['outcome']}{host}  ({counts}){said}")
    return lines


def _describe_exports(exports: list[Status]) -> list[str]:
    if not exports:
        return ["exports: none named (pass --export DEST to check one)"]
    lines = ["exports:"]
    for export in exports:
        if export["state"] == "none":
            lines.append(f"  {export['dest']}: no export there")
            continue
        fresh = "up to date" if export["up_to_date"] else "stale: the manifest changed since"
        rows = f", {export['rows']} rows" if export["rows"] is not None else ""
        shards = f"{export['shards']} shards{rows}"
        lines.append(f"  {export['dest']}: {export['state']}, {export['format']}, {shards}; {fresh}")
    return lines


def _when(stamp: str | None) -> str:
    return "" if not stamp else datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
