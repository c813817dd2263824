"""The GPU view (``:gpus``): every GPU of one node or of all, nvitop-style, beside its engine.

A table of GPUs (util and memory bars, temperature, power against its limit, what slows the
clocks or is broken) above a panel on the GPU under the cursor (clocks, ECC, remapped rows,
MIG mode, processes, history graphs over 1 m to 1 h) and one on its node's engine (KV cache,
queue, TTFT and ITL percentiles, preemptions, token rates). At 120 columns and more the two
panels stand side by side; below, they stack and the graphs go two to a line.

It reads the app's snapshot and the hub's history rings (memory reads); it never does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.events import Resize
from textual.widgets import Input, Label, Static

from console.gpu_history import WINDOWS_S, GpuSeries
from console.models import (
    FleetSnapshot,
    GpuProcess,
    GpuReading,
    GpuRow,
    NodeRow,
    SourceStatus,
    Thresholds,
)
from screens import formatting as fmt
from screens.cells import _BAD_CLOCK_EVENTS, Cells, Column, alarm_if, gpu_state
from screens.formatting import Alarm
from screens.tables import GpusRequested, LiveTable, RowFilter, row_target
from screens.views import FleetView

# Reverse video, as the tables' alarms: it must stand out with NO_COLOR too.
ALARM_STYLE = "bold reverse"
BAR_WIDTH = 8
_EIGHTHS = " ▏▎▍▌▋▊▉"  # a bar's last, partly filled cell
_GRAPH_BLOCKS = " ▁▂▃▄▅▆▇█"  # a graph column's top cell, by eighths
WIDE_MIN_COLUMNS = 120  # from here the engine panel stands beside the GPU's
ENGINE_PANEL_WIDTH = 46
TALL_MIN_ROWS = 40  # from here graphs are three rows high, and more processes are listed
SORTS = ("gpu", "util", "memory", "temp", "power")
METRICS = (  # (history metric, label)
    ("util_pct", "util"),
    ("memory_pct", "mem"),
    ("power_w", "power"),
    ("temperature_c", "temp"),
)
GPUS_HELP = (
    ("enter", "All nodes: show only the node of the GPU under the cursor"),
    ("esc", "Clear the filter, then back to all nodes, then to the view before"),
)


@runtime_checkable
class GpuHistorySource(Protocol):
    """What the graphs need from the hub: one GPU's history of one metric over a window."""

    def gpu_series(self, node: str, index: int, metric: str, window_s: float) -> GpuSeries: ...


# -- text pieces (pure)


def bar(pct: float | None, width: int = BAR_WIDTH) -> str:
    """A bar of ``width`` cells for 0..100, in eighths of a cell; N/A when not known."""
    if pct is None or not math.isfinite(pct):
        return fmt.NA
    eighths = round(min(max(pct, 0.0), 100.0) / 100 * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (_EIGHTHS[part] if part else "")
    return filled + "░" * (width - len(filled))


def memory_pct(r: GpuReading) -> float | None:
    if r.memory_used_mib is None or not r.memory_total_mib:
        return None
    return 100 * r.memory_used_mib / r.memory_total_mib


def _util_cell(r: GpuReading) -> str:
    return fmt.NA if r.util_pct is None else f"{bar(r.util_pct)} {fmt.pct(r.util_pct):>4}"


def _memory_cell(r: GpuReading) -> str:
    if r.memory_used_mib is None:
        return fmt.NA
    used = r.memory_used_mib / 1024
    pct = memory_pct(r)
    if pct is None or r.memory_total_mib is None:  # the size is not known: no bar to draw
        return f"{used:.1f}/{fmt.NA}"
    return f"{bar(pct)} {used:.0f}/{r.memory_total_mib / 1024:.0f}"


def _power_cell(r: GpuReading) -> str:
    if r.power_w is None and r.power_limit_w is None:
        return fmt.NA
    return f"{fmt.number(r.power_w)}/{fmt.number(r.power_limit_w)}"


def gpu_problem(r: GpuReading, stale: bool) -> str:
    """The state cell: a failed or pending row remap first (the GPU needs a reset or
    service), then what the other tables say (lost, ECC, slowed clocks, last known)."""
    if not stale and r.remapped_rows_failed:
        return Alarm("REMAP FAILED")
    if not stale and r.remapped_rows_pending:
        return Alarm("REMAP PENDING")
    return gpu_state(r, stale)


GPU_COLUMNS: tuple[Column, ...] = (
    ("gpu", "GPU", 11),
    ("util", "Util", 13),
    ("mem", "Mem GiB", 14),
    ("temp", "Temp", 4),
    ("power", "Power W", 9),
    ("state", "State", 22),
)


def gpu_row_cells(node: str, gpu: GpuRow, limits: Thresholds, stale: bool) -> Cells:
    r = gpu.reading
    return (
        f"{node}:{r.index}",
        _util_cell(r),
        _memory_cell(r),
        alarm_if(
            r.temperature_c is not None and r.temperature_c > limits.gpu_temp_c,
            fmt.celsius(r.temperature_c),
        ),
        _power_cell(r),
        gpu_problem(r, stale),
    )


def _sort_value(name: str, r: GpuReading) -> float | None:
    if name == "util":
        return r.util_pct
    if name == "memory":
        return memory_pct(r)
    if name == "temp":
        return r.temperature_c
    return r.power_w


def sorted_gpus(nodes: Sequence[NodeRow], sort: str) -> list[tuple[NodeRow, GpuRow]]:
    """``gpu``: in the config's node order, by index; the others highest first, the GPUs
    that do not report the figure last."""
    rows = [(node, gpu) for node in nodes for gpu in node.gpus]
    if sort == "gpu":
        return rows

    def key(item: tuple[NodeRow, GpuRow]) -> tuple[bool, float]:
        value = _sort_value(sort, item[1].reading)
        return (value is None, -(value or 0.0))

    return sorted(rows, key=key)  # stable: ties stay in GPU order


def graph(
    points: Sequence[float | None],
    step_s: float,
    window_s: float,
    width: int,
    high: float,
    height: int = 1,
    newest_age_s: float = 0.0,
) -> list[str]:
    """``height`` rows of ``width`` columns (top first) over the whole window, now at the
    right: each column the peak of its points (a spike must not average away), a blank where
    nothing was reported (a gap, never a zero), and a known 0 still a sliver. The points are
    ``step_s`` apart, the newest ``newest_age_s`` old (a stale node's last reading)."""
    columns: list[float | None] = [None] * width
    per_column_s = window_s / width
    for age, value in enumerate(reversed(points)):
        column = width - 1 - int((newest_age_s + age * step_s) / per_column_s)
        if column < 0:
            break
        if value is not None:
            current = columns[column]
            columns[column] = value if current is None else max(current, value)
    rows = []
    for row in range(height - 1, -1, -1):
        cells = []
        for value in columns:
            if value is None:
                cells.append(" ")
                continue
            eighths = max(1, round(min(max(value / high, 0.0), 1.0) * height * 8))
            cells.append(_GRAPH_BLOCKS[min(8, max(0, eighths - 8 * row))])
        rows.append("".join(cells))
    return rows


def window_label(window_s: float) -> str:
    return f"{window_s / 3600:g}h" if window_s >= 3600 else f"{window_s / 60:g}m"


def flow(parts: Iterable[Text], width: int, separator: str = " · ") -> Text:
    """Parts joined by ``separator``, a new line wherever the next would pass ``width``."""
    out = Text(no_wrap=True, overflow="ellipsis")
    line = 0
    for part in parts:
        if line and line + len(separator) + part.cell_len > width:
            out.append("\n")
            line = 0
        elif line:
            out.append(separator)
            line += len(separator)
        out.append_text(part)
        line += part.cell_len
    return out


def text(value: str) -> Text:
    """A piece of a panel: reverse video when it is an alarm; never Rich markup."""
    return Text(value, style=ALARM_STYLE if isinstance(value, Alarm) else "")


def status_line(what: str, status: SourceStatus | None) -> Text:
    """``GPUs ok via nvidia-smi``, or ``GPUs STALE 12:00:03 · last known · refused at ...``."""
    line = Text(f"{what} ")
    line.append_text(text(fmt.source_state(status)))
    if status is None:
        return line
    if status.stale and status.last_ok_at is not None:
        line.append(" · last known")
    if status.via:
        line.append(f" via {status.via}")
    if status.consecutive_failures and status.last_error:
        when = f" at {fmt.clock(status.last_error_at)}" if status.last_error_at else ""
        line.append(f" · {status.last_error}{when}")
    return line


def _pair(a: float | None, b: float | None) -> str:
    return fmt.NA if a is None and b is None else f"{fmt.number(a)}/{fmt.number(b)}"


def gpu_facts(r: GpuReading) -> list[Text]:
    """What the GPU is and how it runs: name, P-state, clocks, memory temperature, fan."""
    parts = [text(Alarm("GPU LOST"))] if r.lost else []
    parts += [
        Text(f"GPU {r.index} {r.name}"),
        Text(f"{r.pstate or fmt.NA}"),
        Text(f"SM {fmt.number(r.sm_clock_mhz)} MHz"),
        Text(f"mem {fmt.number(r.memory_clock_mhz)} MHz"),
        Text(f"HBM {fmt.celsius(r.memory_temperature_c)}"),
        Text(f"fan {fmt.pct(r.fan_pct)}"),
    ]
    return parts


def gpu_health(r: GpuReading) -> list[Text]:
    """Clock events in words, ECC (volatile and aggregate), row remapping or page
    retirement with what waits for a reset flagged loudly, MIG mode, failed readings."""
    if r.clock_events is None:
        clocks = Text(f"clocks {fmt.NA}")
    elif not r.clock_events:
        clocks = Text("clocks not slowed")
    else:
        clocks = Text("clocks ")
        for i, word in enumerate(r.clock_events):
            clocks.append(", " if i else "")
            clocks.append_text(text(alarm_if(word in _BAD_CLOCK_EVENTS, word)))
    parts = [clocks]
    ecc = (
        r.ecc_uncorrected,
        r.ecc_corrected,
        r.ecc_uncorrected_aggregate,
        r.ecc_corrected_aggregate,
    )
    if all(v is None for v in ecc):
        parts.append(Text(f"ECC {fmt.NA}"))
    else:
        volatile = _pair(r.ecc_uncorrected, r.ecc_corrected)
        aggregate = _pair(r.ecc_uncorrected_aggregate, r.ecc_corrected_aggregate)
        parts.append(
            text(
                alarm_if(
                    bool(r.ecc_uncorrected),
                    f"ECC uncorr/corr vol {volatile} agg {aggregate}",
                )
            )
        )
    if r.remapped_rows_failed:
        parts.append(text(Alarm("REMAP FAILED: the GPU needs service")))
    if r.remapped_rows_pending:
        parts.append(text(Alarm("REMAP PENDING: reset the GPU")))
    if r.retired_pages_pending:
        parts.append(text(Alarm("PAGE RETIREMENT PENDING: reload the driver")))
    if r.remapped_rows_corrected is not None or r.remapped_rows_uncorrected is not None:
        remapped = _pair(r.remapped_rows_uncorrected, r.remapped_rows_corrected)
        parts.append(Text(f"remapped rows uncorr/corr {remapped}"))
    elif r.retired_pages_single_bit is not None or r.retired_pages_double_bit is not None:
        retired = _pair(r.retired_pages_double_bit, r.retired_pages_single_bit)
        parts.append(Text(f"retired pages DBE/SBE {retired}"))
    elif r.remapped_rows_failed is None and r.remapped_rows_pending is None:
        parts.append(Text(f"remapped rows {fmt.NA}"))
    mig = f"MIG {r.mig_mode or fmt.NA}"
    if r.mig_mode_pending and r.mig_mode_pending != r.mig_mode:
        mig += f" ({r.mig_mode_pending} after a reset)"
    if r.mig_devices:
        mig += f", {len(r.mig_devices)} instances"
    parts.append(Text(mig))
    parts += [Text(f"not read: {error}") for error in r.errors]
    return parts


def _process_line(p: GpuProcess) -> str:
    memory = fmt.NA if p.memory_used_mib is None else f"{p.memory_used_mib / 1024:.1f}GiB"
    return f"{p.pid:>7} {(p.user or fmt.NA)[:10]:<10} {memory:>8} {p.name or fmt.NA}"


def process_lines(r: GpuReading, limit: int) -> list[Text]:
    """The GPU's processes, most memory first; at most ``limit`` rows and how many more."""
    if r.processes is None:
        return [Text(f"processes {fmt.NA}: not read from this node")]
    if not r.processes:
        return [Text("no processes")]
    procs = sorted(r.processes, key=lambda p: -(p.memory_used_mib or 0.0))
    lines = [Text(f"{'PID':>7} {'USER':<10} {'GPU MEM':>8} COMMAND", style="bold")]
    lines += [Text(_process_line(p)) for p in procs[:limit]]
    if len(procs) > limit:
        lines.append(Text(f"  +{len(procs) - limit} more"))
    return lines


def _latency(name: str, value: float | None, floors: frozenset[str]) -> str:
    if value is not None and name in floors:
        return fmt.floor_seconds(value)
    return fmt.seconds(value)


def engine_panel(node: NodeRow, limits: Thresholds, width: int) -> Text:
    """The engine of the node: its state and model, then the window's figures."""
    status = node.engine_status
    if status is None:
        return Text(f"engine {node.name}: none configured")
    head = status_line(f"engine {node.name}", status)
    e = node.engine
    if e is None:
        return flow([head, Text("no scrape yet")], width)
    parts = [head, Text(e.model_name or f"model {fmt.NA}")]
    if e.covered_s is None:
        parts.append(Text("fewer than two scrapes in the window"))
    else:
        until = f" to {fmt.clock(e.at)}" if status.stale else ""
        parts.append(Text(f"over {e.covered_s:.0f}s{until}, {fmt.number(e.requests)} req"))
    kv = node.kv_cache_pct
    parts += [
        text(alarm_if(kv is not None and kv > limits.kv_cache_pct, f"KV {fmt.pct(kv)}")),
        Text(f"run {fmt.number(node.running)} wait {fmt.number(node.waiting)}"),
        Text(f"preempt {fmt.number(e.preemptions_per_s, 2)}/s"),
        Text(f"prefix hit {fmt.pct(e.prefix_hit_pct)}"),
        Text(
            f"tok/s prompt {fmt.number(e.prompt_tokens_per_s)} "
            f"gen {fmt.number(e.generation_tokens_per_s)}"
        ),
    ]
    ttft = Text(f"TTFT P50 {_latency('ttft_p50', e.ttft_p50_s, e.floors)} P95 ")
    slow = e.ttft_p95_s is not None and e.ttft_p95_s > limits.ttft_p95_s
    ttft.append_text(text(alarm_if(slow, _latency("ttft_p95", e.ttft_p95_s, e.floors))))
    parts += [
        ttft,
        Text(
            f"ITL P50 {_latency('itl_p50', e.itl_p50_s, e.floors)} "
            f"P95 {_latency('itl_p95', e.itl_p95_s, e.floors)}"
        ),
    ]
    return flow(parts, width)


def _value(metric: str, value: float | None) -> str:
    if metric == "power_w":
        return fmt.NA if value is None else f"{value:.0f}W"
    if metric == "temperature_c":
        return fmt.celsius(value)
    return fmt.pct(value)


def _scale(metric: str, r: GpuReading, points: Sequence[float | None]) -> float:
    """The graph's top: 100 for percentages and degrees, the power limit for power."""
    if metric != "power_w":
        return 100.0
    known = [p for p in points if p is not None]
    return r.power_limit_w or max(known, default=0.0) or 1.0


def graph_block(
    r: GpuReading,
    series: Sequence[GpuSeries],
    width: int,
    per_line: int,
    height: int,
    newest_age_s: float,
) -> list[Text]:
    """The four graphs, ``per_line`` beside each other; each ``label graph latest``."""
    gap = " │ "
    cell = (width - len(gap) * (per_line - 1)) // per_line
    blocks = []
    for s, (_, label) in zip(series, METRICS, strict=True):
        known = [p for p in s.points if p is not None]
        now = _value(s.metric, s.points[-1] if s.points else None)
        tail = (
            f" {now:>5}"
            if per_line > 1
            else f" {now:>5} max {_value(s.metric, max(known, default=None)):>5}"
        )
        rows = graph(
            s.points,
            s.step_s,
            s.window_s,
            max(4, cell - 6 - len(tail)),
            _scale(s.metric, r, s.points),
            height,
            newest_age_s,
        )
        blank = " " * len(tail)
        blocks.append(
            [
                f"{label if i == 0 else '':<6}{row}{tail if i == 0 else blank}"
                for i, row in enumerate(rows)
            ]
        )
    lines = []
    for start in range(0, len(blocks), per_line):
        group = blocks[start : start + per_line]
        for row in range(height):
            lines.append(Text(gap.join(block[row] for block in group)))
    return lines


# -- widgets


class GpuTable(LiveTable):
    """The GPUs of one node or of all, sorted as the view says; enter narrows to a node."""

    COLUMNS = GPU_COLUMNS
    BINDINGS = [Binding("enter", "open_node", "Node")]  # noqa: RUF012

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.node: str | None = None  # None: every node
        self.sort_by = SORTS[0]

    def rows_for(
        self, snapshot: FleetSnapshot, row_filter: RowFilter
    ) -> Iterable[tuple[str, Cells]]:
        nodes = [n for n in snapshot.nodes if self.node in (None, n.name)]
        for node, gpu in sorted_gpus(nodes, self.sort_by):
            r = gpu.reading
            stale = node.gpu_status is not None and node.gpu_status.stale
            cells = gpu_row_cells(node.name, gpu, snapshot.thresholds, stale)
            processes = [p.name or "" for p in r.processes or ()]
            # What an engineer types: a node, a model, a clock event ("power"), a process.
            if row_filter.keeps(cells[0], r.name, cells[-1], *(r.clock_events or ()), *processes):
                yield f"gpu:{node.name}:{r.index}", cells

    def select(self, row_key: str) -> None:
        """Put the cursor on a row, if it is shown."""
        if row_key in self._rows:
            self.move_cursor(row=list(self._rows).index(row_key), animate=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Narrowing to a node means something only while every node is shown.
        return action != "open_node" or self.node is None

    def action_open_node(self) -> None:
        target = row_target(self.selected_key)
        if target is not None:
            self.post_message(GpusRequested(*target))


class GpusScreen(FleetView):
    """``:gpus``: the GPU table over the selected GPU's panel and its node's engine."""

    VIEW_NAME = "gpus"
    HELP_KEYS = GPUS_HELP
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-narrow"),
        (WIDE_MIN_COLUMNS, "-wide"),
    ]
    BINDINGS = [  # noqa: RUF012
        Binding("s", "cycle_sort", "Sort"),
        Binding("w", "cycle_window", "Window"),
        Binding("v", "toggle_graphs", "Graphs"),
    ]
    DEFAULT_CSS = f"""
    GpusScreen #gpus {{ min-height: 4; }}
    GpusScreen #host {{ display: none; }}
    GpusScreen #host.-shown {{ display: block; }}
    GpusScreen #panels {{ height: auto; layout: vertical; }}
    GpusScreen.-wide #panels {{ layout: horizontal; }}
    GpusScreen #gpu-detail, GpusScreen #engine {{ height: auto; padding: 0 1; }}
    GpusScreen.-wide #gpu-detail {{ width: 1fr; }}
    GpusScreen.-wide #engine {{ width: {ENGINE_PANEL_WIDTH}; }}
    """

    def __init__(self, history: GpuHistorySource | None) -> None:
        super().__init__()
        self.history = history  # None: the source keeps no history (no graphs)
        self.node: str | None = None  # None: every node
        self.back_to = "overview"  # the view esc returns to
        self._trail: list[str | None] = []  # the nodes enter narrowed from, for esc
        self._select: str | None = None  # the row to put the cursor on at the next paint
        self.sort = SORTS[0]
        self.window_s = WINDOWS_S[0]
        self.show_graphs = True

    def body(self) -> ComposeResult:
        yield Label(id="gpu-caption", classes="caption")
        yield Static(id="host", classes="caption")
        yield GpuTable(id="gpus")
        with Container(id="panels"):
            yield Static(id="gpu-detail")
            yield Static(id="engine")

    def show(self, node: str | None, gpu_index: int | None, came_from: str) -> None:
        """Show one node (None: all), the cursor on a GPU. esc goes back to ``came_from``;
        from a node narrowed to in this view, first to what the view showed before."""
        if came_from == self.VIEW_NAME and node is not None:
            if node != self.node:
                self._trail.append(self.node)
        else:  # a view left for this one, or `:gpus` typed here: a fresh start
            self._trail.clear()
            if came_from != self.VIEW_NAME:
                self.back_to = came_from
        self.node = node
        self._select = None if node is None or gpu_index is None else f"gpu:{node}:{gpu_index}"
        self._reapply()

    # -- painting

    def apply(self, snapshot: FleetSnapshot) -> None:
        table = self.query_one(GpuTable)
        table.node, table.sort_by = self.node, self.sort
        super().apply(snapshot)
        if self._select is not None:
            table.select(self._select)
            self._select = None
        self._paint_panels()

    def on_mount(self) -> None:
        self._reapply()

    def on_data_table_row_highlighted(self) -> None:
        self._paint_panels()

    def on_resize(self, event: Resize) -> None:
        self._paint_panels()

    def _selected(self, snapshot: FleetSnapshot) -> tuple[NodeRow | None, GpuRow | None]:
        """The node and GPU under the cursor; with no GPU row, the node shown (if one)."""
        target = row_target(self.query_one(GpuTable).selected_key)
        name = target[0] if target else self.node
        node = next((n for n in snapshot.nodes if n.name == name), None)
        if node is None or target is None:
            return node, None
        gpu = next((g for g in node.gpus if g.reading.index == target[1]), None)
        return node, gpu

    def _paint_panels(self) -> None:
        snapshot = self._snapshot
        if snapshot is None or not self.query("#engine"):  # not composed yet: on_mount paints
            return
        width, height = self.app.size
        wide = width >= WIDE_MIN_COLUMNS
        detail_width = (width - ENGINE_PANEL_WIDTH if wide else width) - 2
        engine_width = (ENGINE_PANEL_WIDTH if wide else width) - 2
        node, gpu = self._selected(snapshot)
        lines: list[Text] = []
        series: list[GpuSeries] = []
        if node is not None:
            status = status_line(f"{node.name} GPUs", node.gpu_status)
            facts = [] if gpu is None else [*gpu_facts(gpu.reading), *gpu_health(gpu.reading)]
            lines.append(flow([status, *facts], detail_width))
        if node is not None and gpu is not None:
            r = gpu.reading
            if self.show_graphs and self.history is not None:
                series = [
                    self.history.gpu_series(node.name, r.index, metric, self.window_s)
                    for metric, _ in METRICS
                ]
                per_line = 1 if wide else 2
                rows = 3 if wide and height >= TALL_MIN_ROWS else 1
                # The newest point is the last good poll: a stale node's graphs end there.
                last_ok = node.gpu_status.last_ok_at if node.gpu_status else None
                age = max(0.0, snapshot.taken_at - last_ok) if last_ok is not None else 0.0
                lines += graph_block(r, series, detail_width, per_line, rows, age)
            lines += process_lines(r, 8 if height >= TALL_MIN_ROWS else 2)
        with self.app.batch_update():
            self.query_one("#gpu-caption", Label).update(self._caption(snapshot, series))
            host = self.query_one("#host", Static)
            host.set_class(self.node is None and snapshot.host is not None, "-shown")
            if snapshot.host is not None:
                line = Text(
                    f"console host {snapshot.host.host}: ", no_wrap=True, overflow="ellipsis"
                )
                line.append(fmt.host_summary(snapshot.host))
                host.update(line)
            self.query_one("#gpu-detail", Static).update(Text("\n").join(lines))
            engine = engine_panel(node, snapshot.thresholds, engine_width) if node else Text()
            self.query_one("#engine", Static).update(engine)

    def _caption(self, snapshot: FleetSnapshot, series: Sequence[GpuSeries]) -> Text:
        if self.node is None:
            shown = f"all {len(snapshot.nodes)} nodes"
        elif any(n.name == self.node for n in snapshot.nodes):
            shown = self.node
        else:
            shown = f"{self.node} (not in the config)"
        count = self.query_one(GpuTable).row_count
        parts = [shown, f"{count} GPUs", f"sort {self.sort}" + ("" if self.sort == "gpu" else " ↓")]
        window = window_label(self.window_s)
        if not self.show_graphs:
            parts.append(f"graphs {window} hidden")
        elif self.history is None:
            parts.append("no history from this source")
        elif series:
            step = series[0].step_s
            parts.append(f"graphs {window}: {len(series[0].points)} pts, 1 per {step:g}s")
        else:
            parts.append(f"graphs {window}")
        return Text(" · ".join(parts), no_wrap=True, overflow="ellipsis")

    # -- keys

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._reapply()

    def action_cycle_window(self) -> None:
        self.window_s = WINDOWS_S[(WINDOWS_S.index(self.window_s) + 1) % len(WINDOWS_S)]
        self._paint_panels()

    def action_toggle_graphs(self) -> None:
        self.show_graphs = not self.show_graphs
        self._paint_panels()

    async def action_back(self) -> None:
        filter_input = self.query_one("#filter", Input)
        if self.row_filter.text or filter_input.has_class("-open"):
            await super().action_back()  # clears the filter first
        elif self._trail:
            self._select = self.query_one(GpuTable).selected_key
            self.node = self._trail.pop()
            self._reapply()
        else:
            await self.app.run_action(f"show_view({self.back_to!r})")
