"""`GET /v1/executions`: the organisation's predictions, newest first, filtered by model, status and time.

As the API describes it: `limit` 1-100, `offset`, `model`, `status`, `from`/`to` (ISO 8601 or epoch
seconds, inclusive, on `created_at`); rows carry id, model, status, created/started/completed times, output
and cost, never the inputs; every key of the organisation (here: of the sandbox) is listed. It can be
switched off (404) or made to fail part of the time (500).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from promptgrid.errors import UnknownModel
from promptgrid.models.catalog import get_model
from promptgrid.sandbox.predictions import Prediction

MAX_LIMIT = 100


@dataclass(frozen=True)
class ListingQuery:
    limit: int
    offset: int
    model: str | None
    status: str | None
    since: float | None  # wall-clock epoch seconds
    until: float | None


def parse_query(params: Mapping[str, str]) -> ListingQuery | str:
    """The query, or a sentence saying what is wrong with it."""
    try:
        limit = int(params.get("limit", "20"))
        offset = int(params.get("offset", "0"))
    except ValueError:
        return "limit and offset must be integers"
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return f"limit must be 1 to {MAX_LIMIT} and offset at least 0"
    model = params.get("model") or None
    if model is not None:
        try:
            model = get_model(model).slug
        except UnknownModel:
            return f"unknown model {model!r}"
    try:
        since, until = _moment(params.get("from")), _moment(params.get("to"))
    except ValueError:
        return "from and to must be ISO 8601 times or epoch seconds"
    return ListingQuery(limit, offset, model, params.get("status") or None, since, until)


def _moment(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def list_page(
    predictions: Iterable[Prediction],
    query: ListingQuery,
    *,
    now: float,
    epoch: float,
    base_url: str,
    cost_usd: float,
) -> dict[str, Any]:
    """One page of the listing; `epoch` turns the sandbox clock into wall-clock seconds."""
    rows = []
    for prediction in predictions:
        created = epoch + prediction.created_at
        status = prediction.status(now)
        if query.model is not None and prediction.model != query.model:
            continue
        if query.status is not None and status != query.status:
            continue
        if (query.since is not None and created < query.since) or (
            query.until is not None and created > query.until
        ):
            continue
        rows.append((created, prediction, status))
    rows.sort(key=lambda row: row[0], reverse=True)
    page = rows[query.offset : query.offset + query.limit]
    return {
        "executions": [_row(p, status, now, epoch, base_url, cost_usd) for _, p, status in page],
        "total_count": len(rows),
        "offset": query.offset,
        "limit": query.limit,
    }


def _row(
    prediction: Prediction, status: str, now: float, epoch: float, base_url: str, cost_usd: float
) -> dict[str, Any]:
    finished = status in ("success", "error")
    return {
        "id": prediction.id,
        "model": prediction.model,
        "status": status,
        "created_at": _iso(epoch + prediction.created_at),
        "started_at": _iso(epoch + prediction.started_at) if now >= prediction.started_at else None,
        "completed_at": _iso(epoch + prediction.finished_at) if finished else None,
        "output": (
            f"{base_url}/outputs/{prediction.id}.{prediction.output_format}" if status == "success" else None
        ),
        "cost": cost_usd if status == "success" else 0.0,
    }
