"""The report stage: an output's manifest turned into HTML pages and PNG contact sheets under report/.

Layout inside the output: `report/index.html` (summary and the first prompts), `report/page-N.html`,
`report/thumbs/<job_id>.webp` (made once, reused by later reports), `report/sheets/<prompt-slug>.png`.
Links in a local report are relative, so the folder can be moved or zipped; links in an S3 report are
presigned URLs (valid `link_expires_s`, at most 7 days), so the pages work wherever they are opened.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.progress import StepProgress
from promptgrid.locations import is_loopback_url
from promptgrid.output.manifest.read import provenance, read_manifest
from promptgrid.output.manifest.rows import row_image_id
from promptgrid.output.sinks.base import Sink
from promptgrid.output.sinks.s3 import PRESIGN_MAX_S
from promptgrid.report.charts import charts_section
from promptgrid.report.html import PageContent, PageLinks, Thumbnail, display_size, render_page
from promptgrid.report.layout import PromptGrid, build_grids, sweep_params
from promptgrid.report.saved_layout import Layout, choose_layout
from promptgrid.report.sheets import draw_contact_sheet
from promptgrid.report.summary import summarize_rows
from promptgrid.report.thumbnails import ThumbnailCache, image_key_of, thumb_key

REPORT_PREFIX = "report/"
INDEX_KEY = "report/index.html"
SHEETS_PREFIX = "report/sheets/"
SHEET_STATE_KEY = "report/sheets/index.json"
# Bump when the contact sheet's drawing changes, so existing sheets are redrawn once.
SHEET_LAYOUT_VERSION = 1
DEFAULT_PAGE_SIZE = 25
# Reading images and writing thumbnails is I/O bound (S3 round trips); a few threads keep it moving.
IO_THREADS = 4
_PAGE_KEY = re.compile(r"^report/page-(\d+)\.html$")


@dataclass(frozen=True)
class ReportLinks:
    """Turns sink keys into hrefs usable from a report page: relative for a folder, presigned for S3."""

    sink: Sink
    presign: bool
    expires_s: int

    def href(self, key: str) -> str:
        if self.presign:
            return self.sink.url_for_reading(key, self.expires_s)
        if key.startswith(REPORT_PREFIX):
            return urllib.parse.quote(key[len(REPORT_PREFIX) :])
        return "../" + urllib.parse.quote(key)


@dataclass(frozen=True)
class ReportResult:
    """What one report run wrote: where to open it and how much work it did."""

    uri: str
    pages: int
    prompts: int
    thumbnails_made: int
    sheets_drawn: int


def write_report(
    sink: Sink,
    *,
    across: str | None = None,
    down: str | None = None,
    group_by: Sequence[str] = (),
    price_per_image: float = PRICE_PER_IMAGE_USD,
    page_size: int = DEFAULT_PAGE_SIZE,
    sheets: bool = True,
    link_expires_s: int = PRESIGN_MAX_S,
) -> str:
    """Write the report for everything in the sink's manifest; returns the URI of report/index.html.

    Raises InvalidInput when `across`/`down`/`group_by` name no manifest column.
    """
    result = render_report(
        sink,
        read_manifest(sink),
        across=across,
        down=down,
        group_by=group_by,
        price_per_image=price_per_image,
        page_size=page_size,
        sheets=sheets,
        link_expires_s=link_expires_s,
    )
    return result.uri


def report_url(sink: Sink, expires_s: int = PRESIGN_MAX_S) -> str:
    """A URL that opens the report in a browser: file:// for a folder, presigned HTTPS for S3."""
    return sink.url_for_reading(INDEX_KEY, expires_s)


def render_report(
    sink: Sink,
    table: pa.Table,
    *,
    across: str | None = None,
    down: str | None = None,
    group_by: Sequence[str] = (),
    price_per_image: float = PRICE_PER_IMAGE_USD,
    page_size: int = DEFAULT_PAGE_SIZE,
    sheets: bool = True,
    link_expires_s: int = PRESIGN_MAX_S,
) -> ReportResult:
    """Write the report for a manifest table (the latest row per job) already in hand.

    Axes or groups given are kept for later reports (`saved_layout`); none given, the kept ones apply.
    """
    layout = choose_layout(sink, table.column_names, Layout(across, down, tuple(group_by)))
    rows = table.to_pylist()
    grids = build_grids(rows, layout.across, layout.down, layout.group_by)
    summary = summarize_rows(rows, price_per_image)
    summary.from_sandbox = is_loopback_url(provenance(sink).get("promptgrid.api_base"))
    links = ReportLinks(sink, presign=not _is_local(sink), expires_s=link_expires_s)
    pages = [grids[start : start + page_size] for start in range(0, len(grids), max(1, page_size))] or [[]]
    page_keys = [INDEX_KEY, *(f"{REPORT_PREFIX}page-{n}.html" for n in range(2, len(pages) + 1))]
    page_links = [links.href(key) for key in page_keys]
    charts = charts_section(sink, table, links.href, price_per_image)
    # Thumbnails of new images take most of the time (seconds per hundred): a slow build shows its progress.
    with (
        ThreadPoolExecutor(max_workers=IO_THREADS) as pool,
        StepProgress("report", len(grids), "grids") as step,
    ):
        builder = ReportBuilder(sink, links, ThumbnailCache(sink, pool), sheets)
        for index, page_grids in enumerate(pages):
            thumbnails: dict[str, Thumbnail | str] = {}
            for grid in page_grids:
                thumbnails.update(builder.place_grid(grid))
                step.advance()
            html = render_page(
                PageContent(
                    page_grids,
                    summary if index == 0 else None,
                    PageLinks(page_links, index),
                    sink.root,
                    charts=charts if index == 0 else "",
                ),
                thumbnails,
                builder.sheet_href,
                sweep_params(table.column_names),
            )
            sink.put_bytes(page_keys[index], html.encode("utf-8"), "text/html; charset=utf-8")
        builder.save_sheet_state()
    _delete_stale_pages(sink, len(pages))
    return ReportResult(sink.uri(INDEX_KEY), len(pages), len(grids), builder.cache.made, builder.sheets_drawn)


class ReportBuilder:
    """Per prompt: makes missing thumbnails and redraws the contact sheet only when the grid changed.

    A sheet's fingerprint (its jobs, their statuses and image hashes, the axes) is kept in
    report/sheets/index.json; an unchanged grid keeps its sheet, so a rerun reads no thumbnails back.
    """

    def __init__(self, sink: Sink, links: ReportLinks, cache: ThumbnailCache, sheets: bool):
        self.sink, self.links, self.cache, self.sheets = sink, links, cache, sheets
        self.sheets_drawn = 0
        self.previous = _load_json(sink, SHEET_STATE_KEY) if sheets else {}
        self.present = set(sink.list_keys(SHEETS_PREFIX)) if sheets else set()
        self.current: dict[str, str] = {}

    def place_grid(self, grid: PromptGrid) -> dict[str, Thumbnail | str]:
        """Thumbnails (and, when due, the contact sheet) for one grid; returns each job's for the page."""
        rows = list(grid.rows())
        fingerprint = sheet_fingerprint(grid)
        redraw = self.sheets and not (
            self.previous.get(grid.slug) == fingerprint and sheet_key(grid) in self.present
        )
        pixels = self.cache.thumbnails_for(rows, need_pixels=redraw)
        if redraw:
            images = {job_id: image for job_id, image in pixels.items() if isinstance(image, Image.Image)}
            sheet = draw_contact_sheet(grid, images)
            self.sink.put_bytes(sheet_key(grid), sheet, "image/png", {"prompt-slug": grid.slug})
            self.sheets_drawn += 1
        if self.sheets:
            self.current[grid.slug] = fingerprint
        by_job = {row_image_id(row): row for row in rows}
        return {job_id: _thumbnail(by_job[job_id], value, self.links) for job_id, value in pixels.items()}

    def sheet_href(self, grid: PromptGrid) -> str | None:
        return self.links.href(sheet_key(grid)) if self.sheets else None

    def save_sheet_state(self) -> None:
        """Record what each sheet shows, and delete the sheets of grids this report no longer has (an
        earlier layout's, or a prompt's whose jobs are gone), so report/sheets/ holds this report's only."""
        if not self.sheets:
            return
        self.sink.put_bytes(
            SHEET_STATE_KEY, json.dumps(self.current, sort_keys=True).encode(), "application/json"
        )
        drawn = {f"{SHEETS_PREFIX}{slug}.png" for slug in self.current}
        for key in sorted(self.present):
            if key.endswith(".png") and key not in drawn:
                self.sink.delete(key)


def sheet_key(grid: PromptGrid) -> str:
    return f"{SHEETS_PREFIX}{grid.slug}.png"


def sheet_fingerprint(grid: PromptGrid) -> str:
    """What a contact sheet shows, hashed: a change of job, status, image or axis means a new sheet."""
    shown = [
        [str(row.get(name)) for name in ("job_id", "status", "error_code", "sha256", "image_key")]
        for row in grid.rows()
    ]
    content = [SHEET_LAYOUT_VERSION, grid.prompt, grid.across, grid.down, grid.variant_params, shown]
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:20]


def _thumbnail(row: Mapping[str, Any], value: Any, links: ReportLinks) -> Thumbnail | str:
    if isinstance(value, str):
        return value  # the reason the image could not be read
    width, height = display_size(row.get("width"), row.get("height"))
    image_key = image_key_of(links.sink, row)
    href = links.href(image_key) if image_key else str(row.get("image_uri"))
    return Thumbnail(src=links.href(thumb_key(row_image_id(row))), href=href, width=width, height=height)


def _load_json(sink: Sink, key: str) -> dict[str, str]:
    try:
        state = json.loads(sink.get_bytes(key))
    except (OSError, ValueError):
        return {}  # no state yet, or a damaged one: every sheet is simply drawn again
    return state if isinstance(state, dict) else {}


def _delete_stale_pages(sink: Sink, page_count: int) -> None:
    # An earlier report with more prompts left page files this one no longer links to.
    for key in list(sink.list_keys(f"{REPORT_PREFIX}page-")):
        match = _PAGE_KEY.match(key)
        if match and int(match.group(1)) > page_count:
            sink.delete(key)


def _is_local(sink: Sink) -> bool:
    return "://" not in sink.root
