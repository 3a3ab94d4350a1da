"""The report's charts, drawn by matplotlib (Agg, offline): which settings score best, fail least, cost least.

For each numeric sweep axis, one PNG of small multiples: every metric's mean per value, with ±1 standard
deviation as error bars and the min-max range shaded (the spread over seeds, prompts and the other axes).
For the first two swept axes, one PNG of heatmaps: failure rate, latency, cost per image and each metric's
mean per cell. Then, per metric, the best and worst images as linked thumbnails. Charts are kept under
`report/charts/` with a fingerprint of what they show, so an unchanged rerun draws nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import pyarrow as pa

from promptgrid.output.scores import metric_columns, with_scores
from promptgrid.output.sinks.base import Sink
from promptgrid.report.layout import format_value, sort_key, sweep_params
from promptgrid.report.thumbnails import thumb_key
from promptgrid.types import JobStatus

CHARTS_PREFIX = "report/charts/"
CHART_STATE_KEY = "report/charts/index.json"
CHART_VERSION = 1  # bump when the drawing changes, so kept charts are drawn again
NOT_CHARTED = frozenset({"near_dup_group", "near_dup_rank", "near_dup_size"})  # labels, not measures
LATENCY = "latency_s"
EXTREMES = 3  # best and worst images shown per metric
Row = Mapping[str, Any]


@dataclass(frozen=True)
class Chart:
    """One drawn chart: its key under the output, its title and what it shows (for the fingerprint)."""

    key: str
    title: str
    data: Any
    draw: Callable[[], bytes]


def charts_section(sink: Sink, table: pa.Table, href: Callable[[str], str], price_per_image: float) -> str:
    """Draw (or keep) the charts for a manifest table and return the HTML section showing them."""
    joined = with_scores(table, sink)
    metrics = [name for name in metric_columns(joined, table.column_names) if name not in NOT_CHARTED]
    rows = [_with_latency(row) for row in joined.to_pylist()]
    done = [row for row in rows if row.get("status") == JobStatus.SUCCESS]
    axes = [
        name
        for name in sweep_params(table.column_names)
        if name != "seed" and len({_hashable(row.get(name)) for row in rows}) > 1
    ]
    measures = [*metrics, LATENCY] if any(row.get(LATENCY) is not None for row in done) else metrics
    charts = [_axis_chart(axis, done, measures) for axis in axes if _numeric(done, axis) and measures]
    if len(axes) >= 2:
        charts.append(_heatmap_chart(axes[0], axes[1], rows, metrics, price_per_image))
    if not metrics:
        return ""  # nothing scored yet (`promptgrid score`): the page stays as it was
    _store(sink, charts)
    parts = ['<section class="charts"><h2>Scores by setting</h2>']
    parts += [
        f'<div class="chart"><img src="{escape(href(chart.key))}" alt="{escape(chart.title)}" '
        f'title="{escape(chart.title)}" style="max-width:100%"></div>'
        for chart in charts
    ]
    parts += [_extremes(metric, done, href) for metric in metrics]
    parts.append("</section>")
    return "\n".join(parts)


def _with_latency(row: Row) -> dict[str, Any]:
    latency = row.get("predict_time_s")
    if latency is None and row.get("completed_at") is not None and row.get("submitted_at") is not None:
        latency = (row["completed_at"] - row["submitted_at"]).total_seconds()
    return {**row, LATENCY: latency}


def _hashable(value: Any) -> Any:
    return json.dumps(value, default=str) if isinstance(value, list | dict) else value


def _numeric(rows: Sequence[Row], name: str) -> bool:
    values = [row.get(name) for row in rows if row.get(name) is not None]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _values(rows: Sequence[Row], name: str) -> list[float]:
    values = [row.get(name) for row in rows]
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(float(v))]


def _axis_chart(axis: str, rows: Sequence[Row], measures: Sequence[str]) -> Chart:
    """Each measure's mean, standard deviation and range per value of one numeric axis."""
    xs = sorted({row[axis] for row in rows if row.get(axis) is not None}, key=sort_key)
    series: dict[str, list[tuple[float, float, float, float, float]]] = {}
    for measure in measures:
        points = []
        for x in xs:
            values = _values([row for row in rows if row.get(axis) == x], measure)
            if values:
                spread = statistics.pstdev(values)
                points.append((float(x), statistics.fmean(values), spread, min(values), max(values)))
        series[measure] = points
    title = f"Mean score by {axis} (bars: ±1 standard deviation; shaded: min-max over seeds and prompts)"

    def draw() -> bytes:
        figure, grid = _figure(len(measures))
        for ax, measure in zip(grid, measures, strict=False):
            points = series[measure]
            if points:
                x, mean, spread, low, high = (list(column) for column in zip(*points, strict=True))
                ax.fill_between(x, low, high, alpha=0.15, color="#4a7bd0", linewidth=0)
                ax.errorbar(x, mean, yerr=spread, marker="o", color="#4a7bd0", capsize=3)
            ax.set_title(measure, fontsize=10)
            ax.set_xlabel(axis, fontsize=9)
            ax.grid(alpha=0.3)
        figure.suptitle(f"by {axis}", fontsize=11)
        return _png(figure)

    return Chart(f"{CHARTS_PREFIX}axis-{_slug(axis)}.png", title, [axis, series], draw)


def _heatmap_chart(
    across: str, down: str, rows: Sequence[Row], metrics: Sequence[str], price_per_image: float
) -> Chart:
    """Failure rate, latency, cost per image and each metric's mean per cell of two axes."""
    xs = sorted({_hashable(row.get(across)) for row in rows}, key=sort_key)
    ys = sorted({_hashable(row.get(down)) for row in rows}, key=sort_key)
    cells: dict[str, list[list[float | None]]] = {}
    for name in ["failure rate", "latency_s (mean)", "cost per image (USD)", *metrics]:
        cells[name] = [[None] * len(xs) for _ in ys]
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            cell = [r for r in rows if _hashable(r.get(across)) == x and _hashable(r.get(down)) == y]
            done = [r for r in cell if r.get("status") == JobStatus.SUCCESS]
            cells["failure rate"][j][i] = (1 - len(done) / len(cell)) if cell else None
            latencies = _values(done, LATENCY)
            cells["latency_s (mean)"][j][i] = statistics.fmean(latencies) if latencies else None
            cells["cost per image (USD)"][j][i] = _cost_per_image(done, price_per_image)
            for metric in metrics:
                values = _values(done, metric)
                cells[metric][j][i] = statistics.fmean(values) if values else None
    title = f"Heatmaps: {down} (down) by {across} (across)"

    def draw() -> bytes:
        figure, grid = _figure(len(cells))
        for ax, (name, grid_values) in zip(grid, cells.items(), strict=False):
            _heatmap(ax, name, grid_values, [format_value(x) for x in xs], [format_value(y) for y in ys])
            ax.set_xlabel(across, fontsize=9)
            ax.set_ylabel(down, fontsize=9)
        figure.suptitle(title, fontsize=11)
        return _png(figure)

    key = f"{CHARTS_PREFIX}heatmap-{_slug(across)}-{_slug(down)}.png"
    return Chart(key, title, [across, down, xs, ys, cells], draw)


def _cost_per_image(done: Sequence[Row], price_per_image: float) -> float | None:
    if not done:
        return None
    reported = [float(r["cost_usd"]) for r in done if r.get("cost_usd") is not None]
    return sum(reported) / len(done) if len(reported) == len(done) else price_per_image


def _heatmap(ax: Any, name: str, values: list[list[float | None]], xs: list[str], ys: list[str]) -> None:
    import numpy as np

    grid = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_yticks(range(len(ys)), ys, fontsize=8)
    ax.set_title(name, fontsize=10)
    for j, row in enumerate(values):
        for i, value in enumerate(row):
            if value is not None and len(xs) * len(ys) <= 64:
                light = image.norm(value) > 0.6  # viridis turns yellow: dark text reads there
                colour = "black" if light else "white"
                ax.text(i, j, f"{value:.3g}", ha="center", va="center", fontsize=7, color=colour)


def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(4, max(1, panels))
    lines = math.ceil(max(1, panels) / columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * lines), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False).ravel().tolist()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]


def _store(sink: Sink, charts: Sequence[Chart]) -> None:
    """Draw the charts whose data changed (or whose PNG is gone); keep the others as they are."""
    try:
        state = json.loads(sink.get_bytes(CHART_STATE_KEY))
    except (OSError, ValueError):
        state = {}
    present = set(sink.list_keys(CHARTS_PREFIX))
    for chart in charts:
        content = json.dumps([CHART_VERSION, chart.title, chart.data], default=str, sort_keys=True)
        fingerprint = hashlib.sha256(content.encode()).hexdigest()[:20]
        if state.get(chart.key) != fingerprint or chart.key not in present:
            sink.put_bytes(chart.key, chart.draw(), "image/png")
            state[chart.key] = fingerprint
    sink.put_bytes(CHART_STATE_KEY, json.dumps(state, sort_keys=True).encode(), "application/json")


def _extremes(metric: str, done: Sequence[Row], href: Callable[[str], str]) -> str:
    """The best and worst images by one metric, as linked thumbnails with their value."""
    scored = [row for row in done if isinstance(row.get(metric), int | float)]
    if not scored:
        return ""
    ranked = sorted(scored, key=lambda row: float(row[metric]), reverse=True)
    best, worst = ranked[:EXTREMES], ranked[-EXTREMES:][::-1] if len(ranked) > EXTREMES else []
    parts = [f'<div class="extremes"><h3>{escape(metric)}</h3>']
    for label, chosen in (("best", best), ("worst", worst)):
        if chosen:
            figures = "".join(_tile(row, metric, href) for row in chosen)
            parts.append(f'<p class="meta">{label}</p><div class="cell">{figures}</div>')
    parts.append("</div>")
    return "".join(parts)


def _tile(row: Row, metric: str, href: Callable[[str], str]) -> str:
    job_id = str(row["job_id"])
    image = str(row.get("image_key") or "")
    link = href(image) if image else str(row.get("image_uri") or "")
    caption = f"{metric} {float(row[metric]):.3g}"
    return (
        f'<div class="tile" data-job="{escape(job_id)}"><a href="{escape(link)}">'
        f'<img src="{escape(href(thumb_key(job_id)))}" loading="lazy" width="120" alt="{escape(caption)}" '
        f'title="{escape(job_id)}"></a><div class="meta">{escape(caption)}</div></div>'
    )
