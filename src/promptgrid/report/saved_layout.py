"""The report's chosen layout, kept in the output (`report/layout.json`) so every later report reuses it.

`promptgrid report --across/--down/--group-by` sets it; a run's report, which names no axes, reads it back,
so a layout someone chose survives the next run. A kept axis the manifest no longer has is dropped with a
warning (the rest still applies); deleting the file goes back to the defaults.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from promptgrid.errors import InvalidInput
from promptgrid.output.sinks.base import Sink
from promptgrid.report.layout import check_axes

LAYOUT_KEY = "report/layout.json"
_logger = logging.getLogger("promptgrid.report")


@dataclass(frozen=True)
class Layout:
    """The axes of every grid (None: the default choice) and the columns that set grids apart."""

    across: str | None = None
    down: str | None = None
    group_by: tuple[str, ...] = ()

    @property
    def chosen(self) -> bool:
        return self.across is not None or self.down is not None or bool(self.group_by)

    def to_json(self) -> bytes:
        fields = {"across": self.across, "down": self.down, "group_by": list(self.group_by)}
        return json.dumps(fields, indent=1).encode("utf-8")


def load_layout(sink: Sink) -> Layout:
    """The kept layout; the default one when none was kept or the file does not read."""
    try:
        fields = json.loads(sink.get_bytes(LAYOUT_KEY))
        return Layout(
            across=_name(fields.get("across")),
            down=_name(fields.get("down")),
            group_by=tuple(str(name) for name in fields.get("group_by") or ()),
        )
    except (OSError, ValueError, AttributeError, TypeError):
        return Layout()


def choose_layout(sink: Sink, columns: Iterable[str], asked: Layout) -> Layout:
    """The layout to draw: the one asked for (checked, then kept for later reports), else the kept one.

    Raises InvalidInput when an asked-for axis or grouping names no manifest column.
    """
    columns = list(columns)
    if asked.chosen:
        check_axes(columns, asked.across, asked.down, asked.group_by)
        if asked != load_layout(sink):
            sink.put_bytes(LAYOUT_KEY, asked.to_json(), "application/json")
        return asked
    kept = load_layout(sink)
    return _still_valid(kept, columns) if kept.chosen else kept


def _still_valid(kept: Layout, columns: Sequence[str]) -> Layout:
    """The kept layout without the names the manifest no longer has (what was dropped is logged)."""

    def fits(layout: Layout) -> bool:
        try:
            check_axes(columns, layout.across, layout.down, layout.group_by)
        except InvalidInput:
            return False
        return True

    across = kept.across if fits(Layout(kept.across)) else None
    down = kept.down if fits(Layout(across, kept.down)) else None
    group_by = tuple(name for name in kept.group_by if fits(Layout(across, down, (name,))))
    usable = Layout(across, down, group_by)
    if usable != kept:
        _logger.warning(
            "the report's kept layout (%s: %s) names columns the manifest lacks; using %s",
            LAYOUT_KEY,
            kept,
            usable,
        )
    return usable


def _name(value: object) -> str | None:
    return None if value is None else str(value)
