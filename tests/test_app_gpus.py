"""The GPU view (``:gpus``) of the real app, driven by Pilot, on the embedded demo fleet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Static

from console.aggregate import node_engine
from console.demo import DemoFleet
from console.models import EngineStats
from console.windows import EngineWindow
from screens.gpus import GpusScreen, GpuTable, bar, graph
from screens.tables import NodeTable
from tests.test_app_demo import cell, make_app, wait_for

# A util or memory cell: an eight-cell bar, then the figure.
BAR = re.compile(r"^[█▏▎▍▌▋▊▉░]{8} ")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", seed=1) as demo:
        demo.start()
        yield demo


def gpus_screen(app) -> GpusScreen:
    screen = app.screen
    assert isinstance(screen, GpusScreen), f"not on the GPU view but {app.current_mode}"
    return screen


def table(app) -> GpuTable:
    return gpus_screen(app).query_one(GpuTable)


def panel(app, name: str) -> str:
    """The plain text of a panel: ``gpu-caption``, ``gpu-detail``, ``engine``, ``host``."""
    widget = gpus_screen(app).query_one(f"#{name}")
    return str(widget.content) if isinstance(widget, Static) else ""


def rows(app) -> list[str]:
    return [str(key.value) for key in table(app).rows]


async def show_gpus(app, pilot) -> None:
    """What ``:gpus`` runs, without typing it (keys are slow under Pilot: few of them)."""
    await app.run_action("show_view('gpus')")
    await wait_for(pilot, lambda: bool(app.screen.query(GpuTable)))


def screen_cells(app) -> list[list[tuple[str, object]]]:
    """What the terminal shows, as (character, style) per cell (the private API the
    snapshot tests use too)."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return [
        [(char, seg.style) for strip in line for seg in strip for char in seg.text]
        for line in update.strips
    ]


async def test_gpus_view_shows_every_gpu_of_every_node_with_bars(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("colon", *"gpus", "enter")
        assert app.current_mode == "gpus"
        await wait_for(pilot, lambda: len(rows(app)) == 32)
        gpus = table(app)
        assert set(rows(app)) == {f"gpu:{n}:{i}" for n in fleet.node_names for i in range(8)}
        await wait_for(pilot, lambda: "N/A" not in cell(gpus, "gpu:gpu-a4:7", "util"))
        for key in rows(app):
            assert BAR.match(cell(gpus, key, "util")) and cell(gpus, key, "util").endswith("%")
            assert BAR.match(cell(gpus, key, "mem")) and cell(gpus, key, "mem").endswith("/80")
            assert re.fullmatch(r"\d+/700", cell(gpus, key, "power"))
        assert panel(app, "gpu-caption").startswith("all 4 nodes · 32 GPUs")
        detail = panel(app, "gpu-detail")
        assert "GPU 0 NVIDIA H100 80GB HBM3" in detail and "MIG Disabled" in detail
        # A process, with its owner: gpu-a1 is read with NVML (nvidia-smi cannot tell the user).
        assert re.search(r"^ +\d+ vllm +\d+\.\dGiB python3$", detail, re.M), detail
        assert re.search(r"^util .* \d+% │ mem ", detail, re.M)  # graphs, two to a line
        # The engine panel of the GPU's node fills in once two scrapes hold requests.
        await wait_for(pilot, lambda: "TTFT P50 N/A" not in panel(app, "engine"))
        engine = panel(app, "engine")
        assert engine.startswith("engine gpu-a1 ok")
        assert re.search(r"KV \d+%", engine) and re.search(r"tok/s prompt \d+ gen \d+", engine)
        assert re.search(r"ITL P50 \d+ms P95 \d+ms", engine)


async def test_enter_drills_down_and_esc_goes_back(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.screen.query_one(NodeTable)
        await wait_for(pilot, lambda: nodes.row_count == 4 * 9)
        nodes.focus()
        nodes.move_cursor(row=9)  # gpu-a2's node row (keys are slow under Pilot: few of them)
        await pilot.press("enter")
        assert app.current_mode == "gpus"
        await wait_for(pilot, lambda: len(rows(app)) == 8)
        assert rows(app) == [f"gpu:gpu-a2:{i}" for i in range(8)]
        assert panel(app, "gpu-caption").startswith("gpu-a2 · 8 GPUs")
        await pilot.press("escape")
        assert app.current_mode == "overview"
        nodes.move_cursor(row=12)  # gpu-a2's GPU 2
        await pilot.press("enter")
        await wait_for(pilot, lambda: table(app).selected_key == "gpu:gpu-a2:2")
        assert panel(app, "gpu-detail").startswith("gpu-a2 GPUs ok")
        # From every node, enter narrows to the node of the GPU under the cursor.
        await show_gpus(app, pilot)
        await wait_for(pilot, lambda: len(rows(app)) == 32)
        await pilot.press("G", "enter")
        await wait_for(pilot, lambda: rows(app) == [f"gpu:gpu-a4:{i}" for i in range(8)])
        assert table(app).selected_key == "gpu:gpu-a4:7"
        await pilot.press("escape")  # back to every node, the cursor where it was
        await wait_for(pilot, lambda: len(rows(app)) == 32)
        assert table(app).selected_key == "gpu:gpu-a4:7"
        await pilot.press("escape")
        assert app.current_mode == "overview"


async def test_window_key_changes_the_graphs_window(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_gpus(app, pilot)
        caption = re.compile(r"graphs (\w+): (\d+) pts, 1 per ([\d.]+)s")

        def graphs() -> tuple[str, int, str]:
            found = caption.search(panel(app, "gpu-caption"))
            assert found, panel(app, "gpu-caption")
            return found[1], int(found[2]), found[3]

        await wait_for(pilot, lambda: len(rows(app)) == 32 and graphs()[1] >= 4)
        window, points, step = graphs()
        assert (window, step) == ("1m", "0.5")  # every poll
        await pilot.press("w")
        assert graphs()[0] == "5m"
        await pilot.press("w")
        window, coarse, step = graphs()
        # Fifteen minutes are drawn from the hour's ring: one point per 15 s.
        assert (window, step) == ("15m", "15") and coarse < points
        await pilot.press("w", "w")
        assert graphs()[0] == "1m"
        await pilot.press("v")
        assert "graphs 1m hidden" in panel(app, "gpu-caption")
        assert not re.search(r"^util ", panel(app, "gpu-detail"), re.M)


async def test_sort_and_filter(fleet, tmp_path) -> None:
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_gpus(app, pilot)
        await wait_for(pilot, lambda: len(rows(app)) == 32)
        await wait_for(pilot, lambda: "N/A" not in cell(table(app), "gpu:gpu-a4:7", "temp"))
        await pilot.press("s", "s", "s")  # gpu -> util -> memory -> temp
        assert "sort temp ↓" in panel(app, "gpu-caption")
        temps = [int(cell(table(app), key, "temp").rstrip("C")) for key in rows(app)]
        assert temps == sorted(temps, reverse=True)
        await pilot.press("slash", *"a3", "enter")
        await wait_for(pilot, lambda: len(rows(app)) == 8)
        assert all(key.startswith("gpu:gpu-a3:") for key in rows(app))
        await pilot.press("escape")  # clears the filter, stays in the view
        await wait_for(pilot, lambda: len(rows(app)) == 32)
        assert app.current_mode == "gpus"
        await pilot.press("slash", *"!a3", "enter")
        await wait_for(pilot, lambda: len(rows(app)) == 24)
        assert not any(key.startswith("gpu:gpu-a3:") for key in rows(app))


async def test_stopped_node_reads_stale_in_words_with_no_color(
    fleet, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(fleet, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.screen.query_one(NodeTable)
        await wait_for(pilot, lambda: nodes.row_count == 4 * 9)
        nodes.focus()
        nodes.move_cursor(row=9)  # gpu-a2's node row
        await pilot.press("enter")
        await wait_for(pilot, lambda: "TTFT P50 N/A" not in panel(app, "engine"))
        await wait_for(pilot, lambda: "N/A" not in cell(table(app), "gpu:gpu-a2:0", "util"))
        fleet.inject("node-down", "gpu-a2")
        await wait_for(pilot, lambda: "STALE" in panel(app, "engine"))
        await wait_for(pilot, lambda: "GPUs STALE" in panel(app, "gpu-detail"))
        detail, engine = panel(app, "gpu-detail"), panel(app, "engine")
        assert re.match(r"gpu-a2 GPUs STALE \d\d:\d\d:\d\d · last known", detail)
        assert re.match(r"engine gpu-a2 STALE \d\d:\d\d:\d\d · last known", engine)
        # The last figures stay, marked: the engine's last window, the GPUs' last readings.
        assert re.search(r"to \d\d:\d\d:\d\d, \d+ req", engine)
        assert "TTFT P50 N/A" not in engine
        assert cell(table(app), "gpu:gpu-a2:0", "state") == "last known"
        assert BAR.match(cell(table(app), "gpu:gpu-a2:0", "util"))
        # With no colour at all, the alarm is the word in reverse video.
        await pilot.pause(0.3)
        lines = screen_cells(app)
        text = ["".join(char for char, _ in line) for line in lines]
        y = next(i for i, line in enumerate(text) if "GPUs STALE" in line)
        x = text[y].index("STALE")
        assert app.no_color
        assert all(style is not None and style.reverse for _, style in lines[y][x : x + 5])
        assert app.is_running


def test_bars_and_graphs_never_draw_unknown_as_zero() -> None:
    assert bar(None) == "N/A"
    assert bar(0) == "░" * 8 and bar(100) == "█" * 8 and bar(50) == "████░░░░"
    # Four points 1 s apart at the right of a 8 s window, one gap among them: the gap is
    # blank, a known 0 still a sliver, the rest of the window (no points yet) blank too.
    (row,) = graph([0.0, None, 50.0, 100.0], step_s=1, window_s=8, width=8, high=100)
    assert row == "    ▁ ▄█"
    # A stale node's last reading, 2 s before now: its graph ends 2 s short of the edge.
    assert graph([50.0], step_s=1, window_s=8, width=8, high=100, newest_age_s=2) == ["     ▄  "]
    top, bottom = graph([100.0, 50.0], step_s=1, window_s=2, width=2, high=100, height=2)
    assert (top, bottom) == ("█ ", "██")


def test_a_stale_engine_keeps_the_figures_of_its_last_window() -> None:
    """Long after an engine stopped answering, its panel still has its last minute's
    figures (marked stale by the view); a live engine's window is the last minute."""
    window = EngineWindow(max_age_s=60)
    for second in range(0, 30, 2):  # 100 prompt tokens/s, a preemption every 10 s
        counters = {
            "vllm:prompt_tokens_total": {(): 100.0 * second},
            "vllm:num_preemptions_total": {(): second / 10},
            "vllm:prefix_cache_queries_total": {(): 100.0 * second},
            "vllm:prefix_cache_hits_total": {(): 25.0 * second},
        }
        window.add(1000.0 + second, EngineStats("n1", "m", 1, 0, 0.5, counters=counters))
    later = 1000.0 + 600
    stale = node_engine(window, stale=True, now=later, window_s=60)
    assert stale is not None and stale.at == 1028.0
    assert stale.prompt_tokens_per_s == pytest.approx(100.0)
    assert stale.preemptions_per_s == pytest.approx(0.1)
    assert stale.prefix_hit_pct == pytest.approx(25.0)
    assert stale.covered_s == 28.0
    live = node_engine(window, stale=False, now=later, window_s=60)
    assert live is not None and live.prompt_tokens_per_s is None and live.covered_s is None
    assert node_engine(None, stale=False, now=later, window_s=60) is None
