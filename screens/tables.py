"""Live tables: endpoints, nodes with their GPUs, and sources.

Each table applies a :class:`~console.models.FleetSnapshot` by row key: cells whose text
changed are updated in place, so the cursor and the scroll position never move on refresh.
Rows are rebuilt only when the set of visible rows changes (a filter, a node added), and then
the cursor is put back on the row it was on. Tables never fetch anything themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from console.config import AlertThresholds
from console.models import EndpointRow, FleetSnapshot, GpuRow, NodeRow
from console.stats import sparkline
from screens import formatting as fmt
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


Cells = tuple[str, ...]


class LiveTable(DataTable[str]):
    """A DataTable fed whole snapshots, updated by row key."""

    BINDINGS = [  # noqa: RUF012
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    COLUMNS: tuple[tuple[str, str, int], ...] = ()  # (key, label, width)

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
        data = self._data
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


def alarm_if(condition: bool, text: str) -> str:
    return Alarm(text) if condition else text


def _over(value: float | None, threshold: float) -> bool:
    return value is not None and value > threshold


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
    COLUMNS = (
        ("name", "Endpoint", 12),
        ("state", "State", 14),
        ("p50", "P50", 5),
        ("p95", "P95", 5),
        ("p99", "P99", 5),
        ("ttft", "TTFT95", 6),
        ("rps", "req/s", 5),
        ("err", "err%", 4),
        ("cost", "$/hour", 7),
        ("trend", "trend", 6),
    )

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        for e in snapshot.endpoints:
            if row_filter.keeps(e.name, e.model):
                yield f"endpoint:{e.name}", endpoint_cells(e, snapshot.thresholds)


def endpoint_cells(e: EndpointRow, limits: AlertThresholds) -> Cells:
    status = e.status
    if status is not None and status.consecutive_failures:
        state = Alarm(f"FAIL {fmt.failure_label(status.last_error)}")
    else:
        state = fmt.source_state(status)
        if state == "ok" and e.model_changed:
            state = Alarm("model changed")
        elif state == "ok" and e.source == "engine since start":
            state = "ok (lifetime)"  # too few requests in the minute: since-start percentiles
    return (
        e.name,
        state,
        fmt.seconds(e.p50_s),
        alarm_if(_over(e.p95_s, limits.p95_latency_s), fmt.seconds(e.p95_s)),
        fmt.seconds(e.p99_s),
        alarm_if(_over(e.ttft_p95_s, limits.ttft_p95_s), fmt.seconds(e.ttft_p95_s)),
        fmt.number(e.requests_per_s, 1),
        alarm_if(_over(e.error_pct, limits.error_rate_pct), fmt.error_pct(e.error_pct)),
        fmt.usd(e.cost_per_hour_usd),
        sparkline(e.latency_history, width=6),
    )


class NodeTable(LiveTable):
    COLUMNS = (
        ("name", "Node/GPU", 12),
        ("state", "State", 14),
        ("util", "Util", 4),
        ("mem", "Mem GiB", 7),
        ("temp", "Temp", 4),
        ("power", "Power", 6),
        ("kv", "KV%", 3),
        ("run", "Run", 3),
        ("wait", "Wait", 4),
        ("trend", "Util trend", 10),
    )

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


def _memory(used_mib: float | None, total_mib: float | None, used_digits: int = 0) -> str:
    """``used/total`` in GiB; a single N/A when neither is known."""
    if used_mib is None and total_mib is None:
        return fmt.NA
    used = None if used_mib is None else used_mib / 1024
    total = None if total_mib is None else total_mib / 1024
    return f"{fmt.number(used, used_digits)}/{fmt.number(total)}"


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def node_cells(node: NodeRow, limits: AlertThresholds) -> Cells:
    readings = [g.reading for g in node.gpus]
    used = _sum([r.memory_used_mib for r in readings])
    total = _sum([r.memory_total_mib for r in readings])
    temps = [r.temperature_c for r in readings if r.temperature_c is not None]
    power = _sum([r.power_w for r in readings])
    gpu_count = f"{len(readings)} GPU" if readings else "no GPUs"
    if node.expected_gpus is not None and readings and len(readings) < node.expected_gpus:
        gpu_count = f"{len(readings)}/{node.expected_gpus} GPU!"
    status = fmt.worst(node.gpu_status, node.engine_status)
    state = fmt.source_state(status)
    if state == "ok":
        state = gpu_count
    hottest = max(temps) if temps else None
    history = [
        sum(values) / len(values)
        for values in zip(*(g.util_history for g in node.gpus), strict=False)
    ]
    return (
        node.name,
        state,
        fmt.pct(node.util_pct),
        _memory(used, total),
        alarm_if(_over(hottest, limits.gpu_temp_c), fmt.celsius(hottest)),
        "N/A" if power is None else f"{power / 1000:.2f}kW",
        alarm_if(_over(node.kv_cache_pct, limits.kv_cache_pct), fmt.number(node.kv_cache_pct)),
        fmt.number(node.running),
        fmt.number(node.waiting),
        sparkline(history, width=10, low=0, high=100),
    )


def gpu_cells(gpu: GpuRow, limits: AlertThresholds, stale: bool) -> Cells:
    r = gpu.reading
    if stale:
        state = "last known"  # the node stopped answering: these are its last readings
    else:
        state = "power capped" if r.throttle_reasons and r.throttle_reasons & 0x4 else ""
    return (
        f" └ {r.index}",
        state,
        fmt.pct(r.util_pct),
        _memory(r.memory_used_mib, r.memory_total_mib, 1),
        alarm_if(_over(r.temperature_c, limits.gpu_temp_c), fmt.celsius(r.temperature_c)),
        fmt.number(r.power_w) + ("W" if r.power_w is not None else ""),
        "",
        "",
        "",
        sparkline(gpu.util_history, width=10, low=0, high=100),
    )


class SourceTable(LiveTable):
    COLUMNS = (
        ("name", "Source", 22),
        ("state", "State", 14),
        ("every", "Every", 5),
        ("ok", "Last OK", 8),
        ("fails", "Fails", 5),
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
                        s.last_error or s.warning or "",
                    ),
                )
