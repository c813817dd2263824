"""Screen snapshots at 80x24 and 160x48 on deterministic fleet data.

The data comes from bench/synthetic_fleet.py (the real H100 capture, varied by a fixed
formula), so the pictures are the same on every machine. Update them with
``pytest tests/test_snapshots.py --snapshot-update`` after an intended change, and look at
the diff report before committing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.style import Style
from textual.widget import Widget

from bench.synthetic_fleet import StaticSource
from console.app import LlmopsApp
from console.gpu_history import FINE_SPAN_S, GpuSeries
from console.models import FleetSnapshot, GpuProcess, HostHealth, NodeEngine
from screens.tables import NodeTable, SourceTable


class FixedFaults:
    """The demo fleet's fault controls, without a fleet: enough choices to scroll the picker."""

    faults = {  # noqa: RUF012
        "latency-spike": "engine steps on a node take 3x longer: TTFT, ITL and e2e rise",
        "node-down": "a node's SSH and HTTP servers stop listening and drop their connections",
        "provider-5xx": "the backup provider answers 503 to every request",
    }

    def targets(self, name: str) -> list[str]:
        return ["chat-backup"] if name == "provider-5xx" else [f"gpu-a{n}" for n in (1, 2, 3, 4)]

    def inject(self, name: str, target: str | None = None) -> str:
        raise AssertionError("a snapshot injects nothing")

    def heal(self) -> None:
        raise AssertionError("a snapshot heals nothing")


def _app(faults: FixedFaults | None = None, **shape: object) -> LlmopsApp:
    source = StaticSource(stale_nodes=("gpu-a2",), **shape)
    source.tick = 5  # a few points of history for the sparklines
    return LlmopsApp(source, environment="demo", faults=faults, refresh_s=3600)


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


def test_fault_picker_80x24(snap_compare) -> None:
    """The picker over the overview: its list scrolls, and nothing of either scrollbar but
    the thumb shows (the overview's ``▁▁`` once showed beside the box, a ``▂▂`` inside it)."""
    assert snap_compare(_app(FixedFaults()), terminal_size=(80, 24), press=["f"])


class GpuFleetSource(StaticSource):
    """The synthetic fleet with what the GPU view draws besides: processes, a GPU waiting for
    a row remap, engine figures, the console's own host and a fixed history per GPU."""

    def snapshot(self) -> FleetSnapshot:
        snapshot = super().snapshot()
        nodes = []
        for node in snapshot.nodes:
            gpus = []
            for gpu in node.gpus:
                r = gpu.reading
                used = r.memory_used_mib or 0.0
                processes = (
                    GpuProcess(4003 + r.index, "python3", "vllm", used - 512),
                    GpuProcess(7100 + r.index, "nccl-tests", None, 512.0),
                )
                pending = node.name == "gpu-a1" and r.index == 3
                gpus.append(
                    replace(
                        gpu, reading=replace(r, processes=processes, remapped_rows_pending=pending)
                    )
                )
            engine = NodeEngine(
                at=snapshot.taken_at - 60 * (node.name == "gpu-a2"),
                covered_s=58.0,
                requests=1200.0,
                preemptions_per_s=0.0,
                prompt_tokens_per_s=15000.0,
                generation_tokens_per_s=900.0,
                ttft_p50_s=0.04,
                ttft_p95_s=0.12,
                itl_p50_s=0.006,
                itl_p95_s=0.015,
                prefix_hit_pct=31.0,
                model_name="meta-llama/Llama-3.1-8B-Instruct",
            )
            nodes.append(replace(node, gpus=tuple(gpus), engine=engine))
        host = HostHealth(
            host="bastion-1",
            taken_at=snapshot.taken_at,
            cpu_pct=12.0,
            cpu_count=8,
            memory_used_mib=6144.0,
            memory_total_mib=32768.0,
            memory_pct=18.75,
            disk_path="/var/lib/llmops",
            disk_used_gib=40.0,
            disk_total_gib=200.0,
            disk_pct=20.0,
            load_1m=0.5,
            load_5m=0.4,
            load_15m=0.3,
            gpu_note="no NVIDIA driver",
        )
        return replace(snapshot, nodes=tuple(nodes), host=host)

    def gpu_series(self, node: str, index: int, metric: str, window_s: float) -> GpuSeries:
        """Two minutes of polls every 2 s, a wave per GPU; the last few unknown (a gap)."""
        step_s = 2.0 if window_s <= FINE_SPAN_S else 15.0
        count = min(60, int(window_s / step_s))
        top = {"util_pct": 100, "memory_pct": 90, "power_w": 690, "temperature_c": 75}[metric]
        points = [top * (0.3 + 0.07 * abs((index + i) % 20 - 10)) for i in range(count)]
        return GpuSeries(metric, window_s, (*points[:-3], None, None, points[-1]), step_s)


def _gpus_app() -> LlmopsApp:
    source = GpuFleetSource(stale_nodes=("gpu-a2",))
    source.tick = 5
    return LlmopsApp(source, environment="demo", refresh_s=3600)


def test_gpus_80x24(snap_compare) -> None:
    """`:gpus` on every node: bars, the flagged remap, graphs two to a line, processes, the
    engine panel and the console's host line."""
    press = ["colon", *"gpus", "enter", "j", "j", "j"]  # onto gpu-a1:3, its remap pending
    assert snap_compare(_gpus_app(), terminal_size=(80, 24), press=press)


def test_gpus_stale_node_no_color_80x24(snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enter on a stale node in the overview: its GPUs and engine read STALE, in words."""
    monkeypatch.setenv("NO_COLOR", "1")
    # The overview's nodes table, gpu-a2's row; then 5 m graphs: the 1 m window holds
    # nothing of a node silent for a minute.
    press = ["tab", *["j"] * 9, "enter", "w"]
    assert snap_compare(_gpus_app(), terminal_size=(80, 24), press=press)


Cell = tuple[str, Style | None]


def _screen_cells(app: LlmopsApp) -> list[list[Cell]]:
    """What the terminal shows, cell by cell, modal backgrounds included.

    The same composition ``App.export_screenshot`` prints (private API: the test extras pin
    the Textual release, as the snapshots need anyway).
    """
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    rows = []
    for line in update.strips:  # type: ignore[union-attr]
        row: list[Cell] = []
        for strip in line:
            for segment in strip:
                for char in segment.text:
                    row += [(char, segment.style)] * cell_len(char)
        rows.append(row)
    return rows


def _scrollbar_cells(app: LlmopsApp, widget: Widget, vertical: bool) -> list[Cell]:
    assert widget.show_vertical_scrollbar if vertical else widget.show_horizontal_scrollbar
    bar = widget.vertical_scrollbar if vertical else widget.horizontal_scrollbar
    screen = _screen_cells(app)
    region = bar.region
    return [
        screen[y][x] for y in range(region.y, region.bottom) for x in range(region.x, region.right)
    ]


BLOCK_GLYPHS = "▁▂▃▄▅▆▇█▉▊▋▌▍▎▏"


@pytest.mark.parametrize(
    ("press", "scrolled"),
    [
        ([], "overview nodes"),
        (["f"], "overview nodes"),
        (["f"], "fault list"),
        (["colon", *"sources", "enter"], "sources, sideways"),
    ],
    ids=["overview", "behind-fault-picker", "fault-picker", "sources"],
)
async def test_scrollbars_draw_no_sparkline_glyphs(press: list[str], scrolled: str) -> None:
    """A scrollbar next to a trend column must not look like one: no block glyphs in it,
    even where colours are lost (a pasted screen), and its thumb still shows."""
    app = _app(FixedFaults())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*press)
        await pilot.pause()
        if scrolled == "overview nodes":
            cells = _scrollbar_cells(app, app.screen_stack[0].query_one(NodeTable), True)
        elif scrolled == "fault list":
            cells = _scrollbar_cells(app, app.screen.query_one("OptionList", Widget), True)
        else:
            cells = _scrollbar_cells(app, app.screen.query_one(SourceTable), False)
        assert "".join(char for char, _ in cells).strip() == ""
        assert any(style is not None and style.reverse for _, style in cells), "no thumb"


# --- runbooks ------------------------------------------------------------------------------------

RUNBOOK = """\
id: shrink-batch
title: Shrink the batch on one node
description: Lower max-num-batched-tokens on a node whose TTFT climbs.
answers:
  alerts: [ttft_p95]
  symptoms: ["TTFT up on one node"]
params:
  node: {type: node, default: gpu-a1, description: the node to change}
  tokens: {type: int, default: 4096, min: 256, max: 65536}
steps:
  - {id: look, kind: check, title: the node answers, command: {node: "{{ node }}", run: uptime}}
  - id: shrink
    kind: mutate
    title: fewer batched tokens
    action: engine.set_args
    with: {node: "{{ node }}", set: {max-num-batched-tokens: "{{ tokens }}"}}
  - {id: tell, kind: note, text: "max-num-batched-tokens on {{ node }} is now {{ tokens }}"}
"""


def _runbooks_app(tmp_path: Path) -> LlmopsApp:
    """The synthetic fleet with a session holding one runbook (a hub that never starts)."""
    from console.config import load_config
    from console.hub import Hub
    from console.runbook import load_folders
    from console.session import make_session
    from console.store import Store

    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "shrink.yaml").write_text(RUNBOOK)
    config_path = tmp_path / "config.yaml"
    nodes = "".join(
        f"  - {{name: gpu-a{n}, host: 10.0.3.{n}, engine: {{kind: vllm, port: 8000}}}}\n"
        for n in (1, 2, 3, 4)
    )
    config_path.write_text(f"environment: demo\nstore: {tmp_path / 'db.sqlite'}\nnodes:\n{nodes}")
    config = load_config(config_path)
    store = Store(config.store)
    session = make_session(config, Hub(config, store), store, read_only=False)
    session.runbooks = load_folders([folder])[0]  # only this one: the shipped ones change
    source = StaticSource(stale_nodes=("gpu-a2",))
    source.tick = 5
    return LlmopsApp(source, environment="demo", refresh_s=3600, session=session)


def test_runbooks_view_80x24(snap_compare, tmp_path: Path) -> None:
    app = _runbooks_app(tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), press=["colon", *"runbooks", "enter"])


@pytest.mark.parametrize("no_color", [False, True], ids=["color", "no-color"])
def test_runner_80x24(
    snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_color: bool
) -> None:
    """The form with its typed defaults, a bad value's one-line error, the pending steps."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    app = _runbooks_app(tmp_path)

    async def open_runner(pilot) -> None:
        await pilot.press("colon", *"runbooks", "enter")
        await pilot.pause()
        app.screen.query_one("#runbooks").focus()
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("tab", "ctrl+e", "backspace", "backspace", *"x1")

    assert snap_compare(app, terminal_size=(80, 24), run_before=open_runner)
