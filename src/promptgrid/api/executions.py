"""The account's executions listing (`GET /v1/executions`), read defensively: best effort by the API's own
account, so a row that does not parse is skipped rather than trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from promptgrid.api.prediction import TERMINAL, Prediction, PredictionStatus, parse_prediction, parse_status

MAX_PAGE = 100  # the API's largest `limit`


@dataclass(frozen=True)
class Execution:
    """One row of the listing: no inputs (the API leaves them out), so a match needs a get.

    `ended`: a finished row read as a get's answer would be (its output, `execution_cost` as the cost,
    `run_time` as the predict time); None while it runs."""

    id: str
    model: str
    status: PredictionStatus
    created_at: datetime
    ended: Prediction | None = None


@dataclass(frozen=True)
class ExecutionsPage:
    executions: list[Execution]
    total_count: int | None
    # The API caps `total_count`: when it says so, the count is only a lower bound. Either way a client pages
    # until a page comes back shorter than its limit, never stopping at `total_count`.
    total_capped: bool = False


def parse_executions(body: Mapping[str, Any]) -> ExecutionsPage:
    rows = body.get("executions")
    executions = []
    for row in rows if isinstance(rows, list) else []:
        parsed = _execution(row) if isinstance(row, Mapping) else None
        if parsed is not None:
            executions.append(parsed)
    total = body.get("total_count")
    capped = body.get("total_capped") is True
    return ExecutionsPage(executions, total if isinstance(total, int) else None, capped)


def _execution(row: Mapping[str, Any]) -> Execution | None:
    identifier, created = row.get("id"), parse_time(row.get("created_at"))
    if not isinstance(identifier, str) or not identifier or created is None:
        return None
    status = parse_status(row.get("status"))
    ended = None
    if status in TERMINAL:
        metrics = {"predict_time": row.get("run_time"), "cost": row.get("execution_cost")}
        body = {"status": row.get("status"), "output": row.get("output"), "metrics": metrics}
        ended = parse_prediction(identifier, body)
    return Execution(identifier, str(row.get("model") or ""), status, created, ended)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive means UTC) or epoch seconds; None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """How the listing's `from` and `to` are sent: ISO 8601 in UTC with a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
