"""Live tables: endpoints, nodes with their GPUs, and sources.

Each table applies a :class:`~console.models.FleetSnapshot` by row key: cells whose text
changed are updated in place, so the cursor and the scroll position never move on refresh.
Rows are rebuilt only when the set of visible rows changes (a filter, a node added), and then
the cursor is put back on the row it was on. Tables never fetch anything themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from console.models import FleetSnapshot
from screens import formatting as fmt
from screens.cells import (
    ENDPOINT_COLUMNS,
    NODE_COLUMNS,
    Cells,
    Column,
    endpoint_cells,
    gpu_cells,
    node_cells,
)
from screens.formatting import Alarm


@dataclass(frozen=True)
class RowFilter:
    """``/text`` keeps rows containing text; ``/!text`` keeps the others (as in k9s)."""

    text: str = ""

    @property
    def inverse(self) -> bool:
        return self.text.startswith("!")

    def keeps(self, *names: str) -> bool:
        needle = self.text[1:] if self.inverse else self.text
        if not needle:
            return True
        found = any(needle.lower() in name.lower() for name in names)
        return found != self.inverse


class LiveTable(DataTable[Text]):
    """A DataTable fed whole snapshots, updated by row key."""

    BINDINGS = [  # noqa: RUF012
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    COLUMNS: tuple[Column, ...] = ()

    def __init__(self, *, id: str | None = None) -> None:
        # No cell padding: the widths below carry a one-space gap, so that every column of the
        # endpoint and node tables fits an 80-column terminal.
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, cell_padding=0)
        self._rows: dict[str, Cells] = {}
        # Columns exist from construction: a view may get its first snapshot before mounting.
        for key, label, width in self.COLUMNS:
            self.add_column(label, key=key, width=width + 1)
        self._column_keys = [key for key, _, _ in self.COLUMNS]

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        raise NotImplementedError

    def apply(self, snapshot: FleetSnapshot, row_filter: RowFilter) -> None:
        wanted = dict(self.rows_for(snapshot, row_filter))
        if list(wanted) != list(self._rows):
            self._rebuild(wanted)
            return
        changed = [
            (row_key, column, new_text)
            for row_key, cells in wanted.items()
            for column, new_text, old_text in zip(
                self._column_keys, cells, self._rows[row_key], strict=True
            )
            if new_text != old_text
        ]
        self._rows = wanted
        self._update_cells(changed)

    def _update_cells(self, changed: list[tuple[str, str, str]]) -> None:
        """``update_cell`` for many cells with one repaint instead of one per cell.

        ``DataTable.update_cell`` refreshes the widget on every call, which dominated a
        512-GPU refresh; this writes the same cell store and bumps the same counter once.
        """
        if not changed:
            return
        if not hasattr(self, "_update_count"):  # another DataTable inside: the public way
            for row_key, column, value in changed:
                self.update_cell(row_key, column, _plain(value))
            return
        # DataTable's keys compare and hash equal to their strings: no key objects to build.
        data: dict[Any, dict[Any, Text]] = self._data
        for row_key, column, value in changed:
            data[row_key][column] = _plain(value)
        self._update_count += 1
        self.refresh()

    def _rebuild(self, wanted: dict[str, Cells]) -> None:
        current = self.selected_key
        self.clear()
        for row_key, cells in wanted.items():
            self.add_row(*map(_plain, cells), key=row_key)
        self._rows = wanted
        if current in wanted:
            self.move_cursor(row=list(wanted).index(current), animate=False)

    @property
    def selected_key(self) -> str | None:
        if not self._rows or self.cursor_row >= len(self._rows):
            return None
        return list(self._rows)[self.cursor_row]


# Reverse video, not a colour: an alarm must stand out with NO_COLOR too.
_ALARM_STYLE = "bold reverse"


def _plain(value: str) -> Text:
    """Cells are plain text: a model or node name with ``[brackets]`` is not Rich markup."""
    return _cell_text(str(value), isinstance(value, Alarm))


@lru_cache(maxsize=8192)
def _cell_text(value: str, alarm: bool) -> Text:
    # Shared between cells: most figures repeat from tick to tick and row to row, and a
    # DataTable only reads its cells (Rich copies a Text before styling or wrapping it).
    return Text(value, style=_ALARM_STYLE if alarm else "", no_wrap=True, end="")


class EndpointTable(LiveTable):
    COLUMNS = ENDPOINT_COLUMNS

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for e in snapshot.endpoints:
            if row_filter.keeps(e.name, e.model):
                yield f"endpoint:{e.name}", endpoint_cells(e, snapshot.thresholds)


class GpusRequested(Message):
    """Enter on a node or GPU row: the app opens the GPU view on that node."""

    def __init__(self, node: str, gpu_index: int | None = None) -> None:
        super().__init__()
        self.node = node
        self.gpu_index = gpu_index  # the GPU to put the cursor on; None: the first


def row_target(row_key: str | None) -> tuple[str, int | None] | None:
    """``(node, gpu index)`` of a ``node:NAME`` or ``gpu:NAME:INDEX`` row (index None for a
    node row); None for another row."""
    if row_key is None:
        return None
    kind, _, rest = row_key.partition(":")
    if kind == "node":
        return rest, None
    if kind == "gpu":
        node, _, index = rest.rpartition(":")  # a node's name may hold a colon, an index not
        return node, int(index)
    return None


class NodeTable(LiveTable):
    COLUMNS = NODE_COLUMNS
    BINDINGS = [Binding("enter", "open_gpus", "GPUs")]  # noqa: RUF012

    def action_open_gpus(self) -> None:
        target = row_target(self.selected_key)
        if target is not None:
            self.post_message(GpusRequested(*target))

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for node in snapshot.nodes:
            if not row_filter.keeps(node.name, node.host):
                continue
            yield f"node:{node.name}", node_cells(node, snapshot.thresholds)
            stale = node.gpu_status is not None and node.gpu_status.stale
            for gpu in node.gpus:
                key = f"gpu:{node.name}:{gpu.reading.index}"
                yield key, gpu_cells(gpu, snapshot.thresholds, stale)


class SourceTable(LiveTable):
    COLUMNS = (
        ("name", "Source", 22),
        ("state", "State", 14),
        ("every", "Every", 5),
        ("ok", "Last OK", 8),
        ("fails", "Fails", 5),
        ("via", "Via", 10),
        ("error", "Last error / warning", 80),
    )

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for s in snapshot.sources:
            if row_filter.keeps(s.name):
                yield (
                    f"source:{s.name}",
                    (
                        s.name,
                        fmt.source_state(s),
                        f"{s.interval_s:g}s",
                        fmt.clock(s.last_ok_at) if s.last_ok_at else "never",
                        str(s.consecutive_failures),
                        s.via or "",
                        s.last_error or s.warning or "",
                    ),
                )
