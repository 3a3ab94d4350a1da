"""The report's HTML: self-contained pages (inline CSS and SVG) in which every piece of text is escaped."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from promptgrid.output.manifest.rows import row_image_id
from promptgrid.report.layout import PromptGrid, axis_label, cell_captions, describe_job
from promptgrid.report.summary import OutputFigures, histogram
from promptgrid.types import JobStatus

# Thumbnails are stored at up to 256 px and shown at up to 160 CSS px, sharp on 1.5x screens.
DISPLAY_BOX_PX = 160

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 6px;word-break:break-word}
.meta,.axes{color:#555;margin:0 0 8px}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:4px;vertical-align:top}
th{background:#f5f5f7;font-weight:600;text-align:left}
.summary{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.summary td,.summary th{padding:2px 10px}.summary h2{width:100%;margin:8px 0 0}
.cell{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:160px}figure img{display:block;max-width:160px;max-height:160px;height:auto}
figcaption{font-size:12px;color:#555}
.failure{box-sizing:border-box;min-height:160px;padding:6px;background:#fdecea;border:1px solid #e0a8a2;
 color:#7a1c12;font-size:12px;word-break:break-word}
.failure code{font-weight:700}
.empty{color:#aaa;text-align:center}
nav.pages{margin:16px 0}nav.pages a,nav.pages span{margin-right:8px}
svg text{font:11px system-ui,sans-serif;fill:#555}
"""


@dataclass(frozen=True)
class Thumbnail:
    """Where one successful job's thumbnail and full image are found, as seen from the page."""

    src: str
    href: str
    width: int
    height: int


@dataclass(frozen=True)
class PageLinks:
    """The report's pages in order, as hrefs relative to (or valid from) each page."""

    hrefs: Sequence[str]
    current: int


@dataclass(frozen=True)
class PageContent:
    """What one page shows: its prompts' grids, the run summary (first page only) and the page links."""

    grids: Sequence[PromptGrid]
    summary: OutputFigures | None
    pages: PageLinks
    output: str = ""
    title: str = "promptgrid report"
    charts: str = ""  # the charts section (report.charts), first page only


def render_page(
    content: PageContent,
    thumbnails: Mapping[str, Thumbnail | str],
    sheet_href: Callable[[PromptGrid], str | None],
    params: Sequence[str],
) -> str:
    """One page of the report: the summary (first page only), page links, then one section per prompt."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(content.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(content.title)}</h1>",
        f'<p class="meta">Output: {escape(content.output)}</p>' if content.output else "",
    ]
    if content.summary is not None:
        parts.append(render_summary(content.summary))
    parts.append(content.charts)
    parts.append(render_page_links(content.pages))
    if content.summary is not None and not content.summary.jobs:
        parts.append("<p>The manifest has no jobs yet.</p>")
    for grid in content.grids:
        parts.append(render_grid(grid, thumbnails, sheet_href(grid), params))
    if len(content.pages.hrefs) > 1:
        parts.append(render_page_links(content.pages))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_summary(summary: OutputFigures) -> str:
    """Counts by status, requests per image, cost, latency histogram and failures by code."""
    rows = [("jobs", str(summary.jobs))]
    rows += [(status, str(count)) for status, count in summary.by_status.items()]
    if summary.images != summary.by_status.get(JobStatus.SUCCESS, 0):  # `num_images` jobs: several each
        rows.append(("images", str(summary.images)))
    per_image = summary.requests_per_image
    rows.append(("API requests", str(summary.api_requests)))
    rows.append(("requests per image", "—" if per_image is None else f"{per_image:.2f}"))
    cost_label = "cost (estimated: images × price per image)" if summary.cost_is_estimate else "cost (billed)"
    if summary.from_sandbox:
        cost_label = "cost (sandbox figures: nothing was billed)"
    rows.append((cost_label, f"${summary.cost_usd:.2f}"))
    for label, fraction in (("latency p50", 0.5), ("latency p90", 0.9), ("latency max", 1.0)):
        value = summary.latency_percentile(fraction)
        rows.append((label, "—" if value is None else seconds(value)))
    if summary.run_ids:
        rows.append(("runs", ", ".join(summary.run_ids)))
    parts = ['<section class="summary"><h2>Run summary</h2><table>']
    parts += [f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows]
    parts.append("</table><div>")
    if summary.latencies_s:
        parts.append(f"<p class=meta>Latency ({escape(summary.latency_source)}), successful jobs:</p>")
        parts.append(render_histogram(summary.latencies_s))
    if summary.failures_by_code:
        parts.append("<p class=meta>Failures by reason:</p><table>")
        parts += [
            f"<tr><th>{escape(code)}</th><td>{count}</td></tr>"
            for code, count in summary.failures_by_code.items()
        ]
        parts.append("</table>")
    parts.append("</div></section>")
    return "\n".join(parts)


def render_histogram(values: Sequence[float], width: int = 480, height: int = 120) -> str:
    """A bar chart of the values as inline SVG; each bar's tooltip gives its range and count."""
    bins = histogram(values)
    tallest = max(count for _, _, count in bins)
    plot_height = height - 20
    bar_width = width / len(bins)
    bars = []
    for i, (low, high, count) in enumerate(bins):
        if not count:
            continue
        bar_height = plot_height * count / tallest
        bars.append(
            f'<rect x="{i * bar_width:.1f}" y="{plot_height - bar_height:.1f}"'
            f' width="{max(1.0, bar_width - 1):.1f}"'
            f' height="{bar_height:.1f}" fill="#4a7bd0">'
            f"<title>{seconds(low)}–{seconds(high)}: {count}</title></rect>"
        )
    low, high = bins[0][0], bins[-1][1]
    return (
        f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="latency histogram">{"".join(bars)}'
        f'<text x="0" y="{height - 4}">{seconds(low)}</text>'
        f'<text x="{width}" y="{height - 4}" text-anchor="end">{seconds(high)}</text></svg>'
    )


def seconds(value: float) -> str:
    """A duration to three significant digits: 0.241 s, 8.03 s, 312 s."""
    return f"{value:.3g} s" if value < 1000 else f"{value:.0f} s"


def render_page_links(pages: PageLinks) -> str:
    if len(pages.hrefs) <= 1:
        return ""
    links = [
        f"<span>{number}</span>" if index == pages.current else f'<a href="{escape(href)}">{number}</a>'
        for index, (number, href) in enumerate(enumerate(pages.hrefs, start=1))
    ]
    return f'<nav class="pages">Page {pages.current + 1} of {len(pages.hrefs)}: {"".join(links)}</nav>'


def render_grid(
    grid: PromptGrid, thumbnails: Mapping[str, Thumbnail | str], sheet: str | None, params: Sequence[str]
) -> str:
    """One prompt's table: across values as columns, down values as rows, variants inside each cell."""
    axes = [f"across: {grid.across or '—'}", f"down: {grid.down or '—'}"]
    if grid.variant_params:
        axes.append(f"within a cell: {', '.join(grid.variant_params)}")
    sheet_link = f' · <a href="{escape(sheet)}">contact sheet (PNG)</a>' if sheet else ""
    parts = [
        f'<section class="prompt" id="{escape(grid.slug)}"><h2>{escape(grid.prompt)}</h2>',
        f'<p class="axes">{escape(" · ".join(axes))}{sheet_link}</p>',
        '<table class="grid"><thead><tr>',
        f"<th>{escape(_corner(grid))}</th>",
    ]
    parts += [f"<th>{escape(axis_label(grid.across, value))}</th>" for value in grid.across_values]
    parts.append("</tr></thead><tbody>")
    for down_value in grid.down_values:
        parts.append(f"<tr><th>{escape(axis_label(grid.down, down_value))}</th>")
        for across_value in grid.across_values:
            variants = grid.cell(across_value, down_value)
            parts.append(render_cell(variants, grid, thumbnails, params))
        parts.append("</tr>")
    parts.append("</tbody></table></section>")
    return "\n".join(parts)


def render_cell(
    variants: Sequence[Mapping[str, Any]],
    grid: PromptGrid,
    thumbnails: Mapping[str, Thumbnail | str],
    params: Sequence[str],
) -> str:
    if not variants:
        return '<td class="empty">no job</td>'
    captions = cell_captions(variants, grid.variant_params)
    figures = [
        render_variant(row, caption, thumbnails.get(row_image_id(row)), params)
        for row, caption in zip(variants, captions, strict=True)
    ]
    return f'<td><div class="cell">{"".join(figures)}</div></td>'


def render_variant(
    row: Mapping[str, Any], caption: str, thumbnail: Thumbnail | str | None, params: Sequence[str]
) -> str:
    """A linked thumbnail for a success; for anything else the status and reason as text, never an image.

    `thumbnail` is a string when a successful job's image could not be read back: the reason why.
    """
    title = escape(describe_job(row, params))
    caption = escape(caption)
    if isinstance(thumbnail, Thumbnail):
        return (
            f'<figure class="ok"><a href="{escape(thumbnail.href)}"><img src="{escape(thumbnail.src)}"'
            f' loading="lazy" width="{thumbnail.width}" height="{thumbnail.height}" alt="{title}"'
            f' title="{title}"></a><figcaption>{caption}</figcaption></figure>'
        )
    return (
        f'<figure class="failed" title="{title}"><div class="failure">{failure_text(row, thumbnail)}</div>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def failure_text(row: Mapping[str, Any], problem: str | None = None) -> str:
    """The status, error code and message of a job that has no image to show, escaped."""
    status = str(row.get("status"))
    if status == JobStatus.SUCCESS:
        # The manifest says success but the image could not be read back when the report was made.
        status, code, message = "image missing", "IMAGE_UNREADABLE", problem or "the image could not be read"
    else:
        code, message = row.get("error_code") or "", row.get("error_message") or ""
    return (
        f"<b>{escape(status)}</b> <code>{escape(str(code))}</code>"
        f'<div class="message">{escape(str(message))}</div>'
    )


def display_size(width: Any, height: Any) -> tuple[int, int]:
    """The thumbnail's size on the page, from the image's pixel size; known before the thumbnail loads."""
    if not width or not height:
        return DISPLAY_BOX_PX, DISPLAY_BOX_PX
    scale = DISPLAY_BOX_PX / max(int(width), int(height))
    return max(1, round(int(width) * scale)), max(1, round(int(height) * scale))


def _corner(grid: PromptGrid) -> str:
    if grid.across and grid.down:
        return f"{grid.down} ↓ / {grid.across} →"
    return grid.across or grid.down or ""
