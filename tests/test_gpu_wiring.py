"""GPU and host readings through the hub: which tool each node is read with, the console's own
host as a source, and the per-GPU history the GPU screen graphs."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backends.gpu import (
    NVML_SCRIPT,
    QUERY_FIELDS,
    apps_command,
    parse_apps_csv,
    parse_nvml_json,
    parse_query_csv,
)
from backends.host import HostCollector
from console.app import LlmopsApp
from console.config import Config, load_config
from console.demo import DemoFleet
from console.demo.gpu_sim import GpuSim
from console.demo.nvidia_smi import ComputeApp, nvidia_smi, query_gpus
from console.demo.nvml_sim import SimNvml, SimProcess, run_script
from console.gpu_history import COARSE_STEP_S, GpuHistory
from console.hub import Hub
from console.models import GpuReading, HostHealth
from tests.test_app_demo import fast_config, wait_for


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", seed=1) as demo:
        demo.start()
        yield demo


async def test_each_node_says_whether_it_is_read_with_nvml_or_nvidia_smi(fleet) -> None:
    # Every other demo node has python3 and nvidia-ml-py; the others, like a minimal node
    # image, have not: NVML is tried once there, then the node stays on nvidia-smi, and the
    # sources view says so with the reason.
    hub = Hub(load_config(fleet.config_path))
    try:
        await hub.poll_once("gpus:")
        await hub.poll_once("gpus:")
        statuses = {s.name: s for s in hub.snapshot().sources}
        read_with = {
            name: (s.via, s.via_note) for name, s in statuses.items() if name.startswith("gpus:")
        }
        smi = ("nvidia-smi", "bash: python3: command not found")
        assert read_with == {
            "gpus:gpu-a1": ("nvml", None),
            "gpus:gpu-a2": smi,
            "gpus:gpu-a3": ("nvml", None),
            "gpus:gpu-a4": smi,
        }
        assert all(statuses[name].consecutive_failures == 0 for name in read_with)
        for node in hub.snapshot().nodes:
            # The process list comes with the figures either way: vLLM's workers and memory.
            processes = [p for g in node.gpus for p in g.reading.processes or ()]
            assert processes and all(p.memory_used_mib for p in processes), node.name
    finally:
        await hub.stop()


def test_nvml_and_nvidia_smi_read_a_demo_gpu_alike() -> None:
    """The console's NVML script run against a demo node's GPUs, and that node's nvidia-smi,
    read by the console's two parsers, give the same figures for the same state (NVML adds
    the driver's reservation and the processes' owner)."""
    gpus = GpuSim("gpu-a1", 2, seed=3, rng=None)
    busy = gpus.gpus[1]
    busy.util_pct, busy.memory_used_mib, busy.temperature_c = 73, 61_234, 66.4
    busy.power_w, busy.event_reasons = 512.345, 0x4
    apps = [ComputeApp(4003, "python3", busy, 61_234)]
    stdout, status = run_script(
        NVML_SCRIPT, SimNvml(gpus.gpus, [SimProcess(4003, "python3", "vllm", 1, 61_234)])
    )
    assert status == 0
    nvml = parse_nvml_json("gpu-a1", stdout)
    smi = parse_query_csv("gpu-a1", query_gpus(",".join(QUERY_FIELDS), "csv,nounits", gpus.gpus))
    argv = shlex.split(apps_command())
    apps_csv = nvidia_smi(argv[argv.index("nvidia-smi") + 1 :], gpus.gpus, apps)
    processes = parse_apps_csv("gpu-a1", apps_csv)
    assert nvml.method == "nvml" and len(nvml.gpus) == len(smi) == 2
    for a, b in zip(nvml.gpus, smi, strict=True):
        for field in (
            "uuid",
            "util_pct",
            "memory_used_mib",
            "memory_total_mib",
            "power_limit_w",
            "sm_clock_mhz",
            "memory_clock_mhz",
            "pstate",
            "clock_events",
            "ecc_uncorrected",
            "mig_mode",
        ):
            assert getattr(a, field) == getattr(b, field), (a.index, field)
        assert a.power_w == pytest.approx(b.power_w, abs=0.01)  # nvidia-smi prints 2 decimals
        assert a.temperature_c == round(b.temperature_c)  # NVML reads whole degrees
        assert a.memory_reserved_mib == 480.0 and b.memory_reserved_mib is None
    assert nvml.gpus[1].clock_events == ("power cap",)
    (process,) = nvml.gpus[1].processes or ()
    assert (process.pid, process.user, process.memory_used_mib) == (4003, "vllm", 61_234)
    assert [(p.pid, p.memory_used_mib) for p in processes[busy.uuid]] == [(4003, 61_234)]


def one_node_config(tmp_path: Path) -> Config:
    """A config whose one node is never polled here: only the host source is."""
    path = tmp_path / "config.yaml"
    path.write_text("environment: test\nnodes: [{name: gpu-x1, host: 127.0.0.1}]\n")
    return load_config(path)


async def test_the_consoles_own_host_is_a_source_with_psutils_figures(tmp_path) -> None:
    host = HostCollector(tmp_path / "store.db", name="bastion-1")
    hub = Hub(one_node_config(tmp_path), host=host)
    try:
        await hub.poll_once("host:")
        snapshot = hub.snapshot()
        (status,) = [s for s in snapshot.sources if s.name == "host:bastion-1"]
        assert status.last_ok_at is not None and status.via is not None
        assert status.via.startswith("psutil")
        health = snapshot.host
        assert health is not None and health.host == "bastion-1"
        total_mib = psutil.virtual_memory().total / 1024 / 1024
        assert health.memory_total_mib == pytest.approx(total_mib)
        assert health.disk_path == str(tmp_path)
        assert health.cpu_count == psutil.cpu_count()
    finally:
        await hub.stop()


def test_a_hub_without_a_host_collector_has_no_host_source(tmp_path) -> None:
    hub = Hub(one_node_config(tmp_path))
    assert not [s for s in hub.sources if s.name.startswith("host:")]


class FullDisk(HostCollector):
    async def read(self) -> HostHealth:
        health = await super().read()
        return dataclasses.replace(health, disk_pct=96.0, memory_pct=93.0)


async def test_a_nearly_full_disk_under_the_store_is_a_warning_on_the_host(tmp_path) -> None:
    hub = Hub(one_node_config(tmp_path), host=FullDisk(tmp_path / "s.db", name="b"))
    try:
        await hub.poll_once("host:")
        (status,) = [s for s in hub.snapshot().sources if s.name == "host:b"]
        assert status.warning is not None
        assert f"disk {tmp_path} 96% full" in status.warning
        assert "memory 93% used" in status.warning
    finally:
        await hub.stop()


async def test_the_sources_view_shows_how_the_selected_source_is_read(fleet, tmp_path) -> None:
    config = fast_config(fleet)
    app = LlmopsApp(
        Hub(config, host=HostCollector(tmp_path / "s.db", name="bastion-1")),
        environment=config.environment,
        faults=fleet,
        refresh_s=0.2,
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("colon", *"sources", "enter")
        detail = app.screen.query_one("#detail")

        def shown() -> str:
            return str(detail.render())

        await wait_for(pilot, lambda: "read with" in shown())
        # The first row is the first node's GPUs, read with NVML.
        assert "gpus:gpu-a1: read with nvml" in shown()
        table = app.screen.query_one("#sources")
        table.move_cursor(row=table.get_row_index("source:gpus:gpu-a2"))
        await wait_for(
            pilot, lambda: "gpus:gpu-a2: read with nvidia-smi (bash: python3:" in shown()
        )
        table.move_cursor(row=table.get_row_index("source:host:bastion-1"))
        await wait_for(pilot, lambda: "host:bastion-1: read with psutil" in shown())
        assert "cpu " in shown() and f"disk {tmp_path}" in shown()


def _reading(util: float | None, power: float | None = 300.0) -> GpuReading:
    return GpuReading(
        node="n",
        index=0,
        uuid="GPU-0",
        name="H100",
        util_pct=util,
        memory_util_pct=None,
        memory_used_mib=40_000.0,
        memory_total_mib=80_000.0,
        temperature_c=50.0,
        power_w=power,
        power_limit_w=700.0,
    )


def test_history_keeps_each_poll_for_five_minutes_and_gaps_as_none() -> None:
    history = GpuHistory(poll_s=2.0)
    for step in range(200):  # 400 s of polls, the GPU not reporting power at step 199
        history.add(step * 2.0, _reading(step % 100, power=None if step == 199 else 300.0))
    now = 199 * 2.0
    minute = history.series("util_pct", 60.0, now)
    assert minute.step_s == 2.0
    assert minute.points == tuple(float(s % 100) for s in range(169, 200))
    power = history.series("power_w", 60.0, now)
    assert power.points[-1] is None and power.points[0] == 300.0  # a gap, not a zero
    assert history.series("memory_pct", 300.0, now).points[-1] == 50.0
    # 15 minutes come from the coarse ring: one point per COARSE_STEP_S since the start.
    quarter = history.series("temperature_c", 900.0, now)
    assert quarter.step_s == COARSE_STEP_S
    assert len(quarter.points) == len(range(0, 399, int(COARSE_STEP_S)))
    assert history.recent("util_pct", 3) == (97.0, 98.0, 99.0)


def test_an_hour_of_history_for_a_big_fleet_stays_small() -> None:
    history = GpuHistory(poll_s=2.0)
    for step in range(2000):
        history.add(step * 2.0, _reading(50.0))
    fine, coarse = history._fine, history._coarse
    stored = sum(sys.getsizeof(a) for a in (fine.times, *fine.values, coarse.times, *coarse.values))
    # 256 nodes x 8 GPUs at under 20 KB each: under 40 MB for the whole fleet.
    assert stored < 20_000
    assert len(history.series("util_pct", 3600.0, 4000.0).points) == 240


async def test_the_hub_serves_each_gpus_history_for_the_graphs(fleet) -> None:
    hub = Hub(load_config(fleet.config_path))
    try:
        assert hub.gpu_series("gpu-a1", 0, "util_pct", 60.0).points == ()
        for _ in range(3):
            await hub.poll_once("gpus:gpu-a1")
        series = hub.gpu_series("gpu-a1", 0, "memory_pct", 60.0)
        assert len(series.points) == 3
        reading = hub.snapshot().nodes[0].gpus[0].reading
        assert reading.memory_used_mib is not None and reading.memory_total_mib
        assert series.points[-1] == pytest.approx(
            100 * reading.memory_used_mib / reading.memory_total_mib
        )
    finally:
        await hub.stop()
