"""PNG contact sheets: one prompt's grid drawn as a single labelled image for pasting into a chat or paper."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping

from PIL import Image, ImageDraw

from promptgrid.output.manifest.rows import row_image_id
from promptgrid.report.fonts import FontChain, font_chain
from promptgrid.report.layout import PromptGrid, Row, axis_label, cell_captions
from promptgrid.types import JobStatus

PAD = 8
CAPTION_PX = 16
TITLE_PX = 34
MAX_SHEET_WIDTH = 4096
BACKGROUND = (255, 255, 255)
HEADER = (245, 245, 247)
INK = (29, 29, 31)
FAILURE_FILL = (253, 236, 234)
FAILURE_INK = (122, 28, 18)


def draw_contact_sheet(grid: PromptGrid, thumbnails: Mapping[str, Image.Image], tile_px: int = 160) -> bytes:
    """The grid as a PNG: axis values along the top and left, each variant's seed under its thumbnail.

    A job without a thumbnail is drawn as a box naming its status and error code, so a failure is never
    mistaken for an image. Tiles shrink (down to 48 px) to keep very wide grids under 4096 px. Text in any
    script is drawn with a font that has its characters (`promptgrid.report.fonts`).
    """
    font = font_chain(13)
    label_width = _label_width(grid, font)
    per_cell = max(1, grid.variants_per_cell())
    columns = len(grid.across_values)
    tile_px = _fit_tile(tile_px, columns * per_cell, label_width)
    cell_width = per_cell * (tile_px + PAD) + PAD
    cell_height = tile_px + CAPTION_PX + 2 * PAD
    width = label_width + columns * cell_width
    height = TITLE_PX + CAPTION_PX + PAD + len(grid.down_values) * cell_height
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _draw_labels(draw, grid, font, label_width, cell_width, cell_height, width)
    top = TITLE_PX + CAPTION_PX + PAD
    for row_index, down_value in enumerate(grid.down_values):
        for column_index, across_value in enumerate(grid.across_values):
            origin = (label_width + column_index * cell_width + PAD, top + row_index * cell_height + PAD)
            _draw_cell(
                sheet, draw, grid, grid.cell(across_value, down_value), thumbnails, origin, tile_px, font
            )
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")  # optimize=True doubles the time for a few percent smaller
    return buffer.getvalue()


def _fit_tile(tile_px: int, tiles_across: int, label_width: int) -> int:
    room = (MAX_SHEET_WIDTH - label_width) // max(1, tiles_across) - PAD
    return max(48, min(tile_px, room))


def _label_width(grid: PromptGrid, font: FontChain) -> int:
    labels = [axis_label(grid.down, value) for value in grid.down_values]
    return int(max((font.length(label) for label in labels), default=0)) + 2 * PAD


def _draw_labels(
    draw: ImageDraw.ImageDraw,
    grid: PromptGrid,
    font: FontChain,
    label_width: int,
    cell_width: int,
    cell_height: int,
    width: int,
) -> None:
    characters = max(20, width // 8)
    title = textwrap.shorten(grid.prompt, characters, placeholder="…") or "(empty prompt)"
    font_chain(16).draw_text(draw, (PAD, PAD), title, INK)
    header_top = TITLE_PX
    draw.rectangle((0, header_top, width, header_top + CAPTION_PX + PAD // 2), fill=HEADER)
    for index, value in enumerate(grid.across_values):
        x = label_width + index * cell_width + PAD
        font.draw_text(draw, (x, header_top + 2), axis_label(grid.across, value), INK)
    top = TITLE_PX + CAPTION_PX + PAD
    for index, value in enumerate(grid.down_values):
        y = top + index * cell_height + PAD + 2
        font.draw_text(draw, (PAD, y), axis_label(grid.down, value), INK)


def _draw_cell(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    grid: PromptGrid,
    variants: list[Row],
    thumbnails: Mapping[str, Image.Image],
    origin: tuple[int, int],
    tile_px: int,
    font: FontChain,
) -> None:
    x, y = origin
    captions = cell_captions(variants, grid.variant_params)
    for row, caption in zip(variants, captions, strict=True):
        thumbnail = thumbnails.get(row_image_id(row))
        if thumbnail is not None and row.get("status") == JobStatus.SUCCESS:
            tile = thumbnail.copy()
            tile.thumbnail((tile_px, tile_px))
            sheet.paste(
                tile.convert("RGB"), (x + (tile_px - tile.width) // 2, y + (tile_px - tile.height) // 2)
            )
        else:
            _draw_failure(draw, row, (x, y), tile_px, font)
        font.draw_text(draw, (x, y + tile_px + 2), fit_caption(caption, tile_px, font), INK)
        x += tile_px + PAD


def fit_caption(caption: str, width_px: int, font: FontChain) -> str:
    """The caption within `width_px`: whole if it fits, else only its values ("3.5 · 28"), else cut short."""
    if font.length(caption) <= width_px:
        return caption
    values = " · ".join(part.split(" ", 1)[-1] for part in caption.split(" · "))
    while len(values) > 1 and font.length(values) > width_px:
        values = values[:-2] + "…"
    return values


def _draw_failure(
    draw: ImageDraw.ImageDraw,
    row: Row,
    origin: tuple[int, int],
    tile_px: int,
    font: FontChain,
) -> None:
    x, y = origin
    draw.rectangle((x, y, x + tile_px - 1, y + tile_px - 1), fill=FAILURE_FILL, outline=FAILURE_INK)
    status = str(row.get("status"))
    if status == JobStatus.SUCCESS:
        status, code = "image missing", "IMAGE_UNREADABLE"
    else:
        code = str(row.get("error_code") or "")
    lines = [status.upper(), *textwrap.wrap(code, max(6, tile_px // 8))]
    font.draw_lines(draw, (x + 6, y + 6), lines, FAILURE_INK, spacing=3)
