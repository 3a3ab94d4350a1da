"""`GET /v1/executions`: the organisation's predictions, newest first, filtered by model, status and time.

As the API describes it: `limit` 1-100, `offset`, `model`, `status`, `from`/`to` (ISO 8601 or epoch
seconds, inclusive, on `created_at`); rows carry id, model, status, created/started/completed times, output
and cost, never the inputs; every key of the organisation (here: of the sandbox) is listed. `model` is
known only in the spelling the API knows (another spelling lists nothing). It can be switched off (404) or
made to fail part of the time (500), and made busy: other members' executions listed ahead of ours, and
`total_count` capped (`total_capped: true`, a lower bound), as the docs describe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from promptgrid.models.slugs import dotted_slug
from promptgrid.sandbox.models import find_model
from promptgrid.sandbox.predictions import Prediction

MAX_LIMIT = 100


@dataclass(frozen=True)
class ListingQuery:
    limit: int
    offset: int
    model: str | None  # the model's own slug; "" for a spelling the API does not know (nothing listed)
    status: str | None
    since: float | None  # wall-clock epoch seconds
    until: float | None


def parse_query(params: Mapping[str, str], spelling: str = "any") -> ListingQuery | str:
    """The query, or a sentence saying what is wrong with it; `spelling` is the slugs the API knows."""
    try:
        limit = int(params.get("limit", "20"))
        offset = int(params.get("offset", "0"))
    except ValueError:
        return "limit and offset must be integers"
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return f"limit must be 1 to {MAX_LIMIT} and offset at least 0"
    model = params.get("model") or None
    if model is not None:
        known = find_model(model, spelling)
        model = known.slug if known is not None else ""
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
    foreign: int = 0,
    count_cap: int | None = None,
    spelling: str = "any",
    lag_s: float = 0.0,
) -> dict[str, Any]:
    """One page of the listing; `epoch` turns the sandbox clock into wall-clock seconds; `foreign` other
    members' executions are listed ahead of ours; each of ours shown as it stood `lag_s` before `now`."""
    ours: list[tuple[float, dict[str, Any]]] = []
    shown_at = now - lag_s
    for prediction in predictions:
        created = epoch + prediction.created_at
        status = prediction.status(shown_at)
        if query.model is not None and prediction.model != query.model:
            continue
        if query.status is not None and status != query.status:
            continue
        if (query.since is not None and created < query.since) or (
            query.until is not None and created > query.until
        ):
            continue
        ours.append((created, _row(prediction, status, shown_at, epoch, base_url, cost_usd, spelling)))
    ours.sort(key=lambda pair: pair[0], reverse=True)
    rows = [row for _, row in ours]
    if query.model != "" and query.status in (None, "processing"):
        rows = _foreign(foreign, query, epoch + now, spelling) + rows
    total = len(rows) if count_cap is None else min(len(rows), count_cap)
    return {
        "executions": rows[query.offset : query.offset + query.limit],
        "total_count": total,
        "total_capped": total < len(rows),
        "offset": query.offset,
        "limit": query.limit,
    }


def _foreign(count: int, query: ListingQuery, wall_now: float, spelling: str) -> list[dict[str, Any]]:
    """Other members' executions, just started (so newest, listed first); not ours to read (404)."""
    model = _spelled(query.model or "stable-diffusion-3-5-large", spelling)
    moments = [wall_now - n * 0.001 for n in range(count)]
    return [
        {
            "id": f"00000000-0000-4000-8000-{n:012d}",
            "model": model,
            "status": "processing",
            "created_at": _iso(moment),
            "started_at": _iso(moment),
            "completed_at": None,
            "output": None,
            "execution_cost": 0.0,
            "run_time": None,
        }
        for n, moment in enumerate(moments)
        if (query.since is None or moment >= query.since) and (query.until is None or moment <= query.until)
    ]


def _spelled(slug: str, spelling: str) -> str:
    """A model's slug as the API spells it (dotted where it knows only that spelling)."""
    return dotted_slug(slug) if spelling == "dotted" else slug


def _row(
    prediction: Prediction,
    status: str,
    now: float,
    epoch: float,
    base_url: str,
    cost_usd: float,
    spelling: str,
) -> dict[str, Any]:
    finished = status in ("success", "error")
    return {
        "id": prediction.id,
        "model": _spelled(prediction.model, spelling),
        "status": status,
        "created_at": _iso(epoch + prediction.created_at),
        "started_at": _iso(epoch + prediction.started_at) if now >= prediction.started_at else None,
        "completed_at": _iso(epoch + prediction.finished_at) if finished else None,
        "output": prediction.output_value(base_url) if status == "success" else None,
        "execution_cost": cost_usd * prediction.images if status == "success" else 0.0,
        "run_time": round(prediction.fate.run_s, 4) if finished else None,
    }
