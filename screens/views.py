"""The views: overview, endpoints, nodes, sources. Each shows the latest fleet snapshot.

A view is a Textual screen made of live tables; the app hands it snapshots through
:meth:`FleetView.apply`. ``/`` opens the row filter (``/!text`` inverts it, as in k9s),
``esc`` clears the filter, then goes back to the overview. Views never do I/O.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.scrollbar import ScrollBar, ScrollBarRender
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from console.models import FleetSnapshot
from screens.cells import endpoint_detail
from screens.formatting import clock, host_summary
from screens.tables import EndpointTable, LiveTable, NodeTable, RowFilter, SourceTable


class WholeCellScrollBarRender(ScrollBarRender):
    """Scrollbar thumbs in whole cells, drawn in reverse video.

    Textual draws the ends of a thumb in eighths of a cell with the block glyphs ``▁▂▃…`` and
    ``▉▊▋…``: the very glyphs of the trend sparklines. Where the thumb's colours are lost (a
    screen pasted into an incident channel, ``tmux capture-pane``) or hard to tell apart, only
    those ends show: a stray ``▁▁`` that reads as a GPU's trend, a ``▊`` under a table. A blank
    glyph makes Textual skip the partial ends.
    """

    VERTICAL_BARS: ClassVar[list[str]] = [" "] * 8
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "] * 8


# Textual's documented hook: every scrollbar of the console, views and modals alike.
ScrollBar.renderer = WholeCellScrollBarRender


class FilterInput(Input):
    """The ``/`` line; lists its own keys in the footer while it has the focus."""

    BINDINGS = [  # noqa: RUF012
        Binding("enter", "submit", "Apply"),
        Binding("escape", "screen.back", "Clear filter"),
    ]


class FleetView(Screen[None]):
    """Base for the views: header, tables, a filter line and the footer with active keys."""

    BINDINGS = [  # noqa: RUF012
        Binding("slash", "open_filter", "Filter"),
        Binding("escape", "back", "Back", show=False),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]
    DEFAULT_CSS = """
    FleetView LiveTable { height: 1fr; scrollbar-size-vertical: 1; }
    FleetView #filter { display: none; }
    FleetView #filter.-open { display: block; }
    FleetView .caption { height: 1; padding: 0 1; color: $text-muted; }
    FleetView .detail { height: auto; max-height: 4; padding: 0 1; }
    """

    VIEW_NAME = ""
    # Keys of the view's tables, for its help (the app lists the screen's own bindings).
    HELP_KEYS: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.row_filter = RowFilter()
        self._snapshot: FleetSnapshot | None = None
        self._filtered_from: LiveTable | None = None  # where the focus goes back to

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical():
            yield from self.body()
            # In the flow above the footer, not docked: two docked widgets would overlap.
            yield FilterInput(placeholder="filter rows (!text inverts)", id="filter")
        yield Footer()

    def body(self) -> ComposeResult:
        raise NotImplementedError

    def on_screen_resume(self) -> None:
        # A view shown (again) paints the app's latest snapshot at once, not at the next tick.
        snapshot: FleetSnapshot | None = getattr(self.app, "snapshot", None)
        repaint = getattr(self.app, "repaint_view", None)  # the guarded one, if the app has it
        if snapshot is not None:
            if repaint is not None:
                repaint(self, snapshot)
            else:
                self.apply(snapshot)

    def apply(self, snapshot: FleetSnapshot) -> None:
        self._snapshot = snapshot
        with self.app.batch_update():
            for table in self.query(LiveTable):
                table.apply(snapshot, self.row_filter)

    def _reapply(self) -> None:
        if self._snapshot is not None:
            self.apply(self._snapshot)

    def action_open_filter(self) -> None:
        if isinstance(self.focused, LiveTable):
            self._filtered_from = self.focused
        filter_input = self.query_one("#filter", Input)
        filter_input.add_class("-open")
        filter_input.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While the filter line has the focus, "/" is a character to type, not a key to list.
        return not (action == "open_filter" and isinstance(self.focused, FilterInput))

    def _refocus_table(self) -> None:
        table = self._filtered_from
        if table is None or not table.is_attached:
            table = self.query(LiveTable).first()
        table.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.row_filter = RowFilter(event.value.strip())
            self._reapply()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value.strip():
                event.input.remove_class("-open")
            self._refocus_table()

    async def action_back(self) -> None:
        filter_input = self.query_one("#filter", Input)
        if self.row_filter.text or filter_input.has_class("-open"):
            filter_input.value = ""  # posts Changed, which clears the filter
            filter_input.remove_class("-open")
            self._refocus_table()
        elif self.VIEW_NAME != "overview":
            await self.app.run_action("show_view('overview')")


NODE_HELP = (("enter", "GPUs of the node (or GPU) under the cursor"),)


class OverviewScreen(FleetView):
    VIEW_NAME = "overview"
    HELP_KEYS = NODE_HELP
    DEFAULT_CSS = """
    OverviewScreen #endpoints { height: auto; max-height: 40%; }
    """

    def body(self) -> ComposeResult:
        yield EndpointTable(id="endpoints")
        yield NodeTable(id="nodes")


class DetailView(FleetView):
    """A view with a line or two under its table about the selected row (``#detail``)."""

    def apply(self, snapshot: FleetSnapshot) -> None:
        super().apply(snapshot)
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def detail(self, key: str | None, snapshot: FleetSnapshot) -> str:
        raise NotImplementedError

    def _show_detail(self) -> None:
        table = self.query(LiveTable).first()
        text = self.detail(table.selected_key, self._snapshot) if self._snapshot else ""
        self.query_one("#detail", Static).update(Text(text))


class EndpointsScreen(DetailView):
    VIEW_NAME = "endpoints"

    def body(self) -> ComposeResult:
        yield Label(
            "Endpoints: figures and err% over the last minute (probe percentiles: five)",
            classes="caption",
        )
        yield EndpointTable(id="endpoints")
        yield Static(id="detail", classes="detail")

    def detail(self, key: str | None, snapshot: FleetSnapshot) -> str:
        """Where the selected endpoint's figures come from, on how many requests, what cost."""
        row = next((e for e in snapshot.endpoints if f"endpoint:{e.name}" == key), None)
        return endpoint_detail(row) if row is not None else ""


class NodesScreen(FleetView):
    VIEW_NAME = "nodes"
    HELP_KEYS = NODE_HELP

    def body(self) -> ComposeResult:
        yield NodeTable(id="nodes")


class SourcesScreen(DetailView):
    VIEW_NAME = "sources"

    def body(self) -> ComposeResult:
        yield Label(
            "Every polled source: when it last answered and why it failed", classes="caption"
        )
        yield SourceTable(id="sources")
        yield Static(id="detail", classes="detail")

    def detail(self, key: str | None, snapshot: FleetSnapshot) -> str:
        """The whole last error of the selected source (the table cuts it at its width), how
        it is read, and for the console's own host its figures."""
        status = next((s for s in snapshot.sources if f"source:{s.name}" == key), None)
        if status is None:
            return ""
        lines = []
        if status.last_error:
            when = f" at {clock(status.last_error_at)}" if status.last_error_at else ""
            lines.append(f"{status.name}{when}: {status.last_error}")
        if status.warning:
            lines.append(f"{status.name}: {status.warning}")
        if status.via:
            why = f" ({status.via_note})" if status.via_note else ""
            lines.append(f"{status.name}: read with {status.via}{why}")
        if snapshot.host is not None and status.name == f"host:{snapshot.host.host}":
            lines.append(host_summary(snapshot.host))
        return "\n".join(lines)


VIEWS: dict[str, type[FleetView]] = {
    "overview": OverviewScreen,
    "endpoints": EndpointsScreen,
    "nodes": NodesScreen,
    "sources": SourcesScreen,
}
