"""The console's own host as a source: psutil's figures checked against the system's own, and
its GPUs through NVML in this process (absent here; replayed from the H100 capture)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import psutil
import pynvml
import pytest

from backends.gpu import parse_nvml_json
from backends.host import HostCollector, nvml_note, store_folder
from tests.conftest import FIXTURES

GIB = 1024**3


def _nvml_works_here() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


async def test_host_figures_are_sane_and_agree_with_the_system(tmp_path: Path) -> None:
    store = tmp_path / "not-created-yet" / "incidents.db"
    health = await HostCollector(store).read()
    assert health.host == socket.gethostname()
    assert health.disk_path == str(tmp_path)  # the nearest folder that exists
    assert health.cpu_pct is not None and 0 <= health.cpu_pct <= 100
    assert health.cpu_count == os.cpu_count()
    assert health.memory_total_mib is not None and health.memory_used_mib is not None
    assert 0 < health.memory_used_mib <= health.memory_total_mib
    assert health.memory_pct is not None and 0 < health.memory_pct <= 100
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        assert health.memory_total_mib == pytest.approx(kib / 1024)
    fs = os.statvfs(tmp_path)
    assert health.disk_total_gib == pytest.approx(fs.f_blocks * fs.f_frsize / GIB)
    assert health.disk_used_gib is not None and health.disk_total_gib is not None
    assert 0 < health.disk_used_gib <= health.disk_total_gib
    assert health.disk_pct is not None and 0 < health.disk_pct <= 100
    loads = (health.load_1m, health.load_5m, health.load_15m)
    assert loads == pytest.approx(os.getloadavg(), abs=0.5)
    assert health.errors == ()
    assert abs(health.taken_at - time.time()) < 60


async def test_cpu_percent_covers_the_time_since_the_previous_reading(tmp_path: Path) -> None:
    collector = HostCollector(tmp_path / "s.db")
    await collector.read()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # one core busy for half a second
        pass
    busy = await collector.read()
    assert busy.cpu_pct is not None
    assert busy.cpu_pct >= 100 / (os.cpu_count() or 1) / 3


@pytest.mark.skipif(_nvml_works_here(), reason="this machine has an NVIDIA driver")
async def test_no_nvidia_driver_here_is_a_note_not_a_crash(tmp_path: Path) -> None:
    health = await HostCollector(tmp_path / "s.db").read()
    assert health.gpus == ()
    assert health.gpu_note == "no NVIDIA driver (NVML library not found)"
    assert health.cpu_pct is not None  # the rest of the host is still read


async def test_without_nvidia_ml_py_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now fails
    health = await HostCollector(tmp_path / "s.db").read()
    assert (health.gpus, health.gpu_note) == ((), "no nvidia-ml-py (pynvml) installed")


def _replay(monkeypatch: pytest.MonkeyPatch, capture: Path) -> ModuleType:
    """REPLAY, not a GPU: tests/fixtures/gpu/replay_pynvml.py answering from ``capture``."""
    spec = importlib.util.spec_from_file_location(
        "replay_pynvml", FIXTURES / "gpu" / "replay_pynvml.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("REPLAY_NVML_JSON", str(capture))
    return module


async def test_host_gpus_read_as_on_a_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = FIXTURES / "gpu" / "nvml-load.json"
    collector = HostCollector(
        tmp_path / "s.db", name="bastion-2", nvml=_replay(monkeypatch, capture)
    )
    health = await collector.read()
    assert (health.host, health.gpu_note) == ("bastion-2", None)
    (gpu,) = health.gpus
    assert gpu == parse_nvml_json("bastion-2", capture.read_text()).gpus[0]
    assert (gpu.node, gpu.util_pct, gpu.power_w) == ("bastion-2", 100, pytest.approx(696.737))


async def test_a_host_without_gpus_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = tmp_path / "none.json"
    reply = json.loads((FIXTURES / "gpu" / "nvml-idle.json").read_text())
    capture.write_text(json.dumps({**reply, "devices": []}))
    collector = HostCollector(tmp_path / "s.db", nvml=_replay(monkeypatch, capture))
    health = await collector.read()
    assert (health.gpus, health.gpu_note) == ((), "no NVIDIA GPUs")


async def test_a_hung_nvml_is_waited_for_once(tmp_path: Path) -> None:
    release = threading.Event()
    hung = ModuleType("hung_pynvml")
    hung.nvmlInit = lambda: release.wait(10)  # type: ignore[attr-defined]
    hung.nvmlDeviceGetCount = lambda: 0  # type: ignore[attr-defined]
    hung.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    collector = HostCollector(tmp_path / "s.db", nvml=hung, nvml_timeout_s=0.2)
    first = await collector.read()
    assert first.gpu_note == "NVML did not answer in 0.2s"
    assert first.memory_total_mib is not None  # the host's figures come anyway
    second = await collector.read()
    assert second.gpu_note == "NVML has not answered an earlier read yet"
    release.set()
    for _ in range(100):  # the earlier call ends; then reads go on
        third = await collector.read()
        if third.gpu_note != "NVML has not answered an earlier read yet":
            break
        await asyncio.sleep(0.02)
    assert third.gpu_note == "no NVIDIA GPUs"


async def test_a_figure_psutil_cannot_give_is_na_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load() -> tuple[float, float, float]:
        raise OSError("not on this system")

    monkeypatch.setattr(psutil, "getloadavg", no_load)
    health = await HostCollector(tmp_path / "s.db").read()
    assert (health.load_1m, health.load_5m, health.load_15m) == (None, None, None)
    assert health.errors == ("load average: not on this system",)
    assert health.memory_total_mib is not None and health.disk_total_gib is not None


def test_store_folder_and_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_folder(None) == tmp_path
    assert store_folder("~/deep/er/incidents.db") == tmp_path
    (tmp_path / "deep").mkdir()
    assert store_folder("~/deep/incidents.db") == tmp_path / "deep"
    assert nvml_note("NVMLError_DriverNotLoaded: Driver Not Loaded") == "no NVIDIA driver loaded"
    assert nvml_note("NVMLError_NoPermission: Insufficient Permissions") == (
        "NVML: NVMLError_NoPermission: Insufficient Permissions"
    )
