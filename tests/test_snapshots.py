"""Screen snapshots at 80x24 and 160x48 on deterministic fleet data.

The data comes from bench/synthetic_fleet.py (the real H100 capture, varied by a fixed
formula), so the pictures are the same on every machine. Update them with
``pytest tests/test_snapshots.py --snapshot-update`` after an intended change, and look at
the diff report before committing.
"""

from __future__ import annotations

import pytest

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp


def _app(**shape: object) -> LlmopsApp:
    source = StaticSource(stale_nodes=("gpu-a2",), **shape)
    source.tick = 5  # a few points of history for the sparklines
    return LlmopsApp(source, environment="demo", refresh_s=3600)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_overview(snap_compare, size: tuple[int, int]) -> None:
    assert snap_compare(_app(), terminal_size=size)


def test_overview_during_an_incident_160x48(snap_compare) -> None:
    """A failing, slow endpoint and a stale node: every alarm in reverse video."""
    assert snap_compare(_app(failing_endpoints=("chat-2",)), terminal_size=(160, 48))


def test_sources_view_80x24(snap_compare) -> None:
    press = ["colon", *"sources", "enter", "j", "j"]  # onto a failing source: its detail
    assert snap_compare(_app(), terminal_size=(80, 24), press=press)


def test_help_80x24(snap_compare) -> None:
    assert snap_compare(_app(), terminal_size=(80, 24), press=["question_mark"])


def test_filter_80x24(snap_compare) -> None:
    assert snap_compare(_app(), terminal_size=(80, 24), press=["slash", *"a3"])


def test_overview_no_color_80x24(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(_app(), terminal_size=(80, 24))


def test_prod_header_80x24(snap_compare) -> None:
    app = _app()
    app.environment = "prod"
    assert snap_compare(app, terminal_size=(80, 24))


def test_refresh_repaints_changed_cells_80x24(snap_compare) -> None:
    """The batched cell update must reach the screen: tick 5 painted, then tick 9 applied."""
    app = _app()

    async def next_tick(pilot) -> None:
        app.source.tick = 9  # type: ignore[attr-defined]
        app.refresh_view()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=next_tick)
