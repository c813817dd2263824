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
