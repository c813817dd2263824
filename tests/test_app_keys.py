"""Keyboard grammar on deterministic data: views, palette, filter, help, pause, quit."""

from __future__ import annotations

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from screens.tables import EndpointTable, NodeTable


def make_app() -> LlmopsApp:
    return LlmopsApp(StaticSource(), environment="staging", refresh_s=0.1)


async def test_colon_switches_views_and_esc_goes_back() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("colon", *"nodes", "enter")
        assert app.current_mode == "nodes"
        assert "nodes" in app.sub_title
        await pilot.press("colon", *"bogus", "enter")
        assert app.current_mode == "nodes"  # an unknown view changes nothing
        await pilot.press("escape")
        assert app.current_mode == "overview"


async def test_colon_tab_completes_and_a_unique_beginning_is_enough() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("colon", *"sou", "tab")
        assert app.screen.query_one("Input").value == "sources"
        await pilot.press("enter")
        assert app.current_mode == "sources"
        await pilot.press("colon", *"no", "enter")
        assert app.current_mode == "nodes"
        await pilot.press("colon", *"qu", "enter")
        assert not app.is_running


async def test_command_palette_switches_views() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"view: sources")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.current_mode == "sources"


async def test_filter_and_inverse_filter() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        nodes = app.screen.query_one(NodeTable)
        assert nodes.row_count == 4 * 9
        await pilot.press("slash", *"a3", "enter")
        assert [key for key in nodes._rows if key.startswith("node:")] == ["node:gpu-a3"]
        assert nodes.row_count == 9
        assert app.screen.query_one(EndpointTable).row_count == 0
        await pilot.press("slash", "ctrl+a", "ctrl+k", *"!a3", "enter")
        assert nodes.row_count == 3 * 9
        assert "node:gpu-a3" not in nodes._rows
        await pilot.press("escape")  # clears the filter, stays in the view
        assert nodes.row_count == 4 * 9
        assert app.current_mode == "overview"


async def test_filter_lists_its_keys_and_hands_the_focus_back() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.screen.query_one(NodeTable)
        nodes.focus()
        await pilot.press("slash", *"a3")
        active = app.screen.active_bindings.values()
        shown = {a.binding.key: a.binding.description for a in active if a.binding.show}
        assert shown.get("escape") == "Clear filter" and shown.get("enter") == "Apply"
        assert "slash" not in shown  # here "/" is typed, not a key
        filter_line = app.screen.query_one("#filter")
        footer = app.screen.query_one("Footer")
        assert filter_line.region.bottom <= footer.region.y  # fully visible above the footer
        await pilot.press("escape")
        assert app.focused is nodes  # back where the engineer was, not the first table
        active = app.screen.active_bindings.values()
        assert "slash" in {a.binding.key for a in active if a.binding.show}
        assert nodes.row_count == 4 * 9


async def test_filter_keeps_the_cursor_on_its_row() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        nodes = app.screen.query_one(NodeTable)
        nodes.focus()
        await pilot.press(*["j"] * 19)  # gpu-a3's first GPU
        assert nodes.selected_key == "gpu:gpu-a3:0"
        await pilot.press("slash", *"a3", "enter")
        assert nodes.selected_key == "gpu:gpu-a3:0"
        assert nodes.cursor_row == 1


async def test_help_shows_the_keys_of_the_view() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("question_mark")
        table = app.screen.query_one("DataTable")
        keys = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert {"?", ":", "/", "space", "q"} <= set(keys)
        assert "f" not in keys  # no demo fleet: no fault key
        await pilot.press("escape")
        assert app.screen.query(NodeTable)


async def test_q_quits() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_esc_back_updates_the_header() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("colon", *"sources", "enter")
        assert app.sub_title == "sources"
        await pilot.press("escape")
        assert app.sub_title == "overview"


async def test_a_view_whose_repaint_fails_is_shown_on_the_sources_view_and_the_app_lives(
    monkeypatch,
) -> None:
    # Issue 7, item 2: an unguarded `screen.apply()` that raised ended the app (exit 1).
    from screens.views import OverviewScreen, SourcesScreen

    original = OverviewScreen.apply
    failing = [True]

    def apply(self, snapshot) -> None:
        if failing[0]:
            raise ValueError("cannot convert float NaN to integer")
        original(self, snapshot)

    monkeypatch.setattr(OverviewScreen, "apply", apply)
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.pause(0.3)  # a few refreshes, each failing
        assert app.is_running
        await pilot.press("colon", *"sources", "enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, SourcesScreen)
        view = next(s for s in app.snapshot.sources if s.name == "view:overview")
        assert view.consecutive_failures >= 1
        assert view.last_error == "repaint failed: ValueError: cannot convert float NaN to integer"
        assert "source:view:overview" in app.screen.query_one("#sources")._rows
        failing[0] = False
        await pilot.press("colon", *"overview", "enter")
        await pilot.pause(0.3)
        assert app.current_mode == "overview"
        assert (
            next(s for s in app.snapshot.sources if s.name == "view:overview").consecutive_failures
            == 0
        )


async def test_the_endpoints_view_explains_the_selected_row() -> None:
    app = make_app()
    async with app.run_test() as pilot:
        await pilot.press("colon", *"endpoints", "enter")
        await pilot.pause(0.2)
        detail = str(app.screen.query_one("#detail").render())
        assert detail.startswith("chat-1: figures from engine histograms of 2 node(s) over 58s")
        await pilot.press("j")
        await pilot.pause(0.1)
        assert str(app.screen.query_one("#detail").render()).startswith("chat-2: ")
