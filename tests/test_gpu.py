"""GPU collectors against the real H100 captures in fixtures/gpu: nvidia-smi CSV, the NVML
JSON the node script prints, the fallback between them, and the script itself run for real
against a replay of the recorded NVML readings."""

from __future__ import annotations

import ast
import asyncio
import copy
import getpass
import json
import os
import shlex
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest

from backends.gpu import (
    APPS_FIELDS,
    CLOCK_EVENT_WORDS,
    NODE_TIMEOUT,
    NVIDIA_SMI,
    NVML,
    NVML_COMMAND,
    NVML_COMMAND_NAME,
    NVML_SCRIPT,
    QUERY_FIELDS,
    GpuCollector,
    GpuQueryError,
    NvmlUnavailable,
    RunCommand,
    apps_command,
    clock_event_words,
    parse_apps_csv,
    parse_nvml_json,
    parse_query_csv,
    query_command,
    snapshot_warning,
)
from backends.ssh import CommandFailed, CommandTimedOut, SshError
from console.models import GpuProcess
from tests.conftest import FIXTURES

SHARED_H100 = Path(__file__).parents[2] / "shared" / "fixtures" / "gpu" / "h100"


def test_query_fields_match_the_captured_header() -> None:
    header = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text().splitlines()[0]
    names = [cell.split(" [")[0] for cell in header.split(", ")]
    assert tuple(names) == QUERY_FIELDS
    command = query_command()
    assert command.startswith("timeout -k 5 20 nvidia-smi --query-gpu=index,uuid,name,")
    assert command.endswith(" --format=csv,nounits")


def test_load_capture_parses_to_the_printed_values() -> None:
    text = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    (gpu,) = parse_query_csv("gpu-a1", text)
    assert gpu.node == "gpu-a1"
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.util_pct == 100
    assert gpu.memory_util_pct == 34
    assert gpu.memory_total_mib == 81559
    assert gpu.memory_used_mib == 29751
    assert gpu.temperature_c == 55
    assert gpu.power_w == pytest.approx(698.06)
    assert gpu.power_limit_w == 700
    assert gpu.pstate == "P0"
    assert gpu.throttle_reasons == 0x4  # SW power cap, as the capture notes say
    assert gpu.clock_events == ("power cap",)
    assert (gpu.ecc_uncorrected, gpu.ecc_corrected) == (0, 0)
    assert gpu.lost is False
    assert gpu.fan_pct is None  # "[N/A]" on a passively cooled card is unknown, not 0
    assert (gpu.sm_clock_mhz, gpu.memory_clock_mhz) == (1425, 2619)
    assert (gpu.mig_mode, gpu.driver_version) == ("Disabled", "580.159.04")
    assert gpu.processes is None  # a --query-gpu row holds none: read apart, see below


def test_idle_capture() -> None:
    text = (FIXTURES / "gpu" / "nvidia-smi-query-idle.csv").read_text()
    (gpu,) = parse_query_csv("n", text)
    assert gpu.util_pct == 0
    assert gpu.memory_used_mib == 0
    assert gpu.throttle_reasons == 0x1  # GPU idle
    assert gpu.clock_events == ("idle",)


def test_subset_and_reordered_fields() -> None:
    text = "utilization.gpu [%], index, power.draw [W]\n17, 3, [N/A]\n"
    (gpu,) = parse_query_csv("n", text)
    assert (gpu.index, gpu.util_pct, gpu.power_w) == (3, 17, None)
    assert gpu.memory_total_mib is None


@pytest.mark.parametrize(
    "text",
    ["", "Failed to initialize NVML: Driver/library version mismatch\n", "index, name\n0\n"],
)
def test_unusable_output_is_a_one_line_error(text: str) -> None:
    with pytest.raises(GpuQueryError) as info:
        parse_query_csv("gpu-a9", text)
    assert "gpu-a9" in str(info.value)
    assert "\n" not in str(info.value)


# --- Clock-event reasons ------------------------------------------------------------------

# NVML's names for the bits (pynvml.nvmlClocksEventReason*, or the older
# nvmlClocksThrottleReason* for the two that only exist under that name).
_NVML_NAMES = {
    "idle": "GpuIdle",
    "app clocks": "ApplicationsClocksSetting",
    "power cap": "SwPowerCap",
    "HW slowdown": "HwSlowdown",
    "sync boost": "SyncBoost",
    "SW thermal": "SwThermalSlowdown",
    "HW thermal": "HwThermalSlowdown",
    "power brake": "HwPowerBrakeSlowdown",
    "display clocks": "DisplayClockSetting",
    "board limit": "BoardLimit",
    "reliability": "Reliability",
}


def test_clock_event_bits_are_nvmls() -> None:
    assert [word for _, word in CLOCK_EVENT_WORDS] == list(_NVML_NAMES)
    for bit, word in CLOCK_EVENT_WORDS:
        name = _NVML_NAMES[word]
        nvml = getattr(pynvml, f"nvmlClocksEventReason{name}", None)
        assert (nvml or getattr(pynvml, f"nvmlClocksThrottleReason{name}")) == bit, word


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (0x0, ()),
        (0x1, ("idle",)),
        (0x4, ("power cap",)),
        (0x8 | 0x40, ("HW slowdown", "HW thermal")),
        (0x20 | 0x80 | 0x10, ("sync boost", "SW thermal", "power brake")),
        (0x2 | 0x100, ("app clocks", "display clocks")),
        (0x4 | 0x1000, ("power cap", "0x1000")),  # a bit newer than NVML: shown, not dropped
        (None, None),
    ],
)
def test_clock_event_masks_decode_to_words(mask: int | None, words: tuple[str, ...]) -> None:
    assert clock_event_words(mask) == words


_XML_WORDS = {
    "gpu_idle": "idle",
    "applications_clocks_setting": "app clocks",
    "sw_power_cap": "power cap",
    "hw_slowdown": "HW slowdown",
    "sync_boost": "sync boost",
    "sw_thermal_slowdown": "SW thermal",
    "hw_thermal_slowdown": "HW thermal",
    "hw_power_brake_slowdown": "power brake",
    "display_clocks_setting": "display clocks",
}


@pytest.mark.parametrize("state", ["idle", "load"])
def test_decoded_reasons_agree_with_nvidia_smi_q(state: str) -> None:
    """The CSV mask, decoded, names the reasons `nvidia-smi -q -x` marks Active at the time."""
    reasons = ET.parse(FIXTURES / "gpu" / f"nvidia-smi-q-{state}.xml").find(
        "gpu/clocks_event_reasons"
    )
    assert reasons is not None
    active = {
        _XML_WORDS[reason.tag.removeprefix("clocks_event_reason_")]
        for reason in reasons
        if reason.text == "Active"
    }
    (gpu,) = parse_query_csv("n", (FIXTURES / "gpu" / f"nvidia-smi-query-{state}.csv").read_text())
    assert active and set(gpu.clock_events or ()) == active


def _derived(column: str, value: str, state: str = "load") -> str:
    """The real capture with one column's value changed (a derived row, not a capture)."""
    header, row = (FIXTURES / "gpu" / f"nvidia-smi-query-{state}.csv").read_text().splitlines()
    names = [cell.split(" [")[0] for cell in header.split(", ")]
    cells = row.split(", ")
    cells[names.index(column)] = value
    return f"{header}\n{', '.join(cells)}\n"


def test_derived_thermal_and_power_brake_row() -> None:
    text = _derived("clocks_event_reasons.active", "0x00000000000000C8")
    (gpu,) = parse_query_csv("n", text)
    assert gpu.clock_events == ("HW slowdown", "HW thermal", "power brake")


def test_derived_row_with_ecc_errors() -> None:
    text = _derived("ecc.errors.corrected.volatile.total", "12")
    text = text.replace(", 0, 12, Default", ", 3, 12, Default")  # uncorrected before it
    (gpu,) = parse_query_csv("n", text)
    assert (gpu.ecc_uncorrected, gpu.ecc_corrected) == (3, 12)


def test_legacy_header_decodes_the_same_reasons() -> None:
    text = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    (gpu,) = parse_query_csv("n", text.replace("clocks_event_reasons", "clocks_throttle_reasons"))
    assert (gpu.throttle_reasons, gpu.clock_events) == (0x4, ("power cap",))


def _lost_row(index: str) -> str:
    """A derived row: every value of the load capture replaced by ``[GPU is lost]``."""
    cells = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text().splitlines()[1]
    return ", ".join([index, *["[GPU is lost]"] * (len(cells.split(", ")) - 1)])


def test_a_lost_gpu_is_a_reading_that_says_so() -> None:
    capture = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    healthy, lost = parse_query_csv("gpu-a1", capture + _lost_row("1") + "\n")
    assert (healthy.index, healthy.lost, healthy.power_w) == (0, False, pytest.approx(698.06))
    assert (lost.index, lost.lost, lost.uuid, lost.name) == (1, True, "gpu-a1:1", "unknown GPU")
    figures = (lost.util_pct, lost.memory_used_mib, lost.temperature_c, lost.power_w)
    assert figures == (None, None, None, None)
    assert (lost.ecc_uncorrected, lost.ecc_corrected, lost.clock_events) == (None, None, None)


def test_a_lost_gpu_without_its_index_takes_its_place_in_the_list() -> None:
    capture = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text()
    _, lost = parse_query_csv("gpu-a1", capture + _lost_row("[GPU is lost]") + "\n")
    assert (lost.index, lost.lost) == (1, True)


def test_a_figure_printed_next_to_gpu_is_lost_is_not_trusted() -> None:
    (gpu,) = parse_query_csv("n", _derived("memory.used", "[GPU is lost]"))
    assert gpu.lost
    assert (gpu.power_w, gpu.uuid) == (None, "GPU-5e1ec7ed-0000-4000-8000-0000000000a1")


@pytest.mark.skipif(not SHARED_H100.is_dir(), reason="no ../shared beside this checkout")
def test_the_copied_captures_are_the_shared_ones() -> None:
    # Runs where the project's shared/ folder sits beside the checkout, as in CI.
    ours = {"SOURCES.md", "replay_pynvml.py"}
    copies = [p for p in (FIXTURES / "gpu").iterdir() if p.name not in ours]
    assert len(copies) >= 8
    for copied in copies:
        assert (SHARED_H100 / copied.name).read_bytes() == copied.read_bytes(), copied.name


# --- Every capture parses ---------------------------------------------------------------------


def test_every_file_in_the_fixtures_folder_is_read_by_a_test() -> None:
    readers: dict[str, Callable[[str], object]] = {
        "nvidia-smi-query-idle.csv": lambda text: parse_query_csv("n", text),
        "nvidia-smi-query-load.csv": lambda text: parse_query_csv("n", text),
        "nvidia-smi-apps-load.csv": lambda text: parse_apps_csv("n", text),
        "nvml-idle.json": lambda text: parse_nvml_json("n", text),
        "nvml-load.json": lambda text: parse_nvml_json("n", text),
        "nvidia-smi-q-idle.xml": ET.fromstring,
        "nvidia-smi-q-load.xml": ET.fromstring,
        "nvidia-smi-and-versions.txt": lambda text: "Driver Version: 580.159.04" in text or None,
        "replay_pynvml.py": ast.parse,
        "SOURCES.md": lambda text: "nvml-{idle,load}.json" in text or None,
    }
    files = {p.name for p in (FIXTURES / "gpu").iterdir()}
    assert files == set(readers)  # a new capture needs a reader here
    for name, read in readers.items():
        assert read((FIXTURES / "gpu" / name).read_text()), name


# --- The process list (nvidia-smi --query-compute-apps) -----------------------------------


def test_apps_capture_parses_to_its_process() -> None:
    text = (FIXTURES / "gpu" / "nvidia-smi-apps-load.csv").read_text()
    assert parse_apps_csv("gpu-a1", text) == {
        "GPU-5e1ec7ed-0000-4000-8000-0000000000a1": (
            GpuProcess(pid=433, name="python3", user=None, memory_used_mib=29742),
        )
    }
    header = text.splitlines()[0]
    assert [cell.split(" [")[0] for cell in header.split(", ")] == [
        "used_gpu_memory" if f == "used_memory" else f for f in APPS_FIELDS
    ]
    assert apps_command() == (
        "timeout -k 5 20 nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid"
        " --format=csv,nounits"
    )


def test_no_process_is_an_empty_list_and_a_mig_memory_figure_is_na() -> None:
    header = (FIXTURES / "gpu" / "nvidia-smi-apps-load.csv").read_text().splitlines()[0]
    assert parse_apps_csv("n", header + "\n") == {}
    (processes,) = parse_apps_csv("n", f"{header}\n7, vllm, [N/A], GPU-x\n").values()
    assert processes == (GpuProcess(pid=7, name="vllm", user=None, memory_used_mib=None),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No devices were found\n",
        "pid, process_name, used_gpu_memory [MiB], gpu_uuid\n433, python3\n",
        "pid, process_name, used_gpu_memory [MiB], gpu_uuid\nabc, python3, 1, GPU-x\n",
    ],
)
def test_malformed_apps_csv_is_a_one_line_error(text: str) -> None:
    with pytest.raises(GpuQueryError) as info:
        parse_apps_csv("gpu-a9", text)
    assert str(info.value).startswith("gpu-a9: nvidia-smi ")
    assert "\n" not in str(info.value)


# --- The NVML JSON: the captures the node script's output is shaped after ---------------------

MIB = 1024 * 1024


def _nvml(state: str) -> dict[str, object]:
    reply: dict[str, object] = json.loads((FIXTURES / "gpu" / f"nvml-{state}.json").read_text())
    return reply


def _device(reply: dict[str, object]) -> dict[str, object]:
    devices = reply["devices"]
    assert isinstance(devices, list)
    device: dict[str, object] = devices[0]
    return device


def test_nvml_load_capture_parses_to_the_recorded_values() -> None:
    snapshot = parse_nvml_json("gpu-a1", (FIXTURES / "gpu" / "nvml-load.json").read_text())
    assert (snapshot.node, snapshot.method, snapshot.driver_version) == (
        "gpu-a1",
        "nvml",
        "580.159.04",
    )
    (gpu,) = snapshot.gpus
    assert (gpu.index, gpu.name) == (0, "NVIDIA H100 80GB HBM3")
    assert gpu.uuid == "GPU-5e1ec7ed-0000-4000-8000-0000000000a1"
    assert (gpu.util_pct, gpu.memory_util_pct) == (100, 34)
    assert gpu.memory_total_mib == 81559  # 85520809984 bytes, as nvidia-smi prints it
    # NVML's v1 "used" counts the driver's reservation, which nvidia-smi leaves out.
    assert gpu.memory_used_mib == pytest.approx(30230.8, abs=0.1)
    assert gpu.memory_reserved_mib is None
    assert gpu.temperature_c == 55
    assert (gpu.power_w, gpu.power_limit_w) == (pytest.approx(696.737), 700)
    assert (gpu.sm_clock_mhz, gpu.memory_clock_mhz) == (1380, 2619)
    assert gpu.pstate == "P0"
    assert (gpu.throttle_reasons, gpu.clock_events) == (4, ("power cap",))
    assert (gpu.ecc_uncorrected, gpu.ecc_corrected) == (0, 0)
    assert (gpu.mig_mode, gpu.mig_mode_pending, gpu.mig_devices) == ("Disabled", "Disabled", ())
    assert gpu.processes == (
        GpuProcess(pid=433, name=None, user=None, memory_used_mib=29742),  # printed form
    )
    # Not supported on this card (fan, page retirement) or not in the capture: N/A, quietly.
    assert gpu.fan_pct is None
    assert (gpu.retired_pages_pending, gpu.retired_pages_single_bit) == (None, None)
    assert (gpu.memory_temperature_c, gpu.ecc_uncorrected_aggregate) == (None, None)
    assert (gpu.remapped_rows_corrected, gpu.remapped_rows_pending) == (None, None)
    assert (gpu.lost, gpu.errors) == (False, ())
    assert snapshot_warning(snapshot) is None


def test_nvml_idle_capture() -> None:
    (gpu,) = parse_nvml_json("n", (FIXTURES / "gpu" / "nvml-idle.json").read_text()).gpus
    assert (gpu.util_pct, gpu.temperature_c, gpu.power_w) == (0, 31, pytest.approx(71.492))
    assert gpu.memory_used_mib == 480  # the driver's reservation alone: nothing runs
    assert (gpu.clock_events, gpu.processes) == (("idle",), ())


@pytest.mark.parametrize("state", ["idle", "load"])
def test_nvml_and_nvidia_smi_captures_agree(state: str) -> None:
    (nvml,) = parse_nvml_json("n", (FIXTURES / "gpu" / f"nvml-{state}.json").read_text()).gpus
    csv_text = (FIXTURES / "gpu" / f"nvidia-smi-query-{state}.csv").read_text()
    (smi,) = parse_query_csv("n", csv_text)
    same = [
        *("uuid", "name", "memory_total_mib", "util_pct", "memory_util_pct", "temperature_c"),
        *("pstate", "clock_events", "ecc_uncorrected", "ecc_corrected", "fan_pct"),
        *("memory_clock_mhz", "mig_mode", "driver_version", "power_limit_w"),
    ]
    for name in same:
        assert getattr(nvml, name) == getattr(smi, name), name
    assert nvml.power_w == pytest.approx(smi.power_w, rel=0.01)  # taken seconds apart
    assert nvml.memory_used_mib is not None and smi.memory_used_mib is not None
    assert nvml.memory_used_mib - smi.memory_used_mib == pytest.approx(480, abs=2)


def _derived_nvml(change: Callable[[dict[str, object]], None], state: str = "load") -> str:
    """The load capture with one device's values changed (a derived reply, not a capture)."""
    reply = copy.deepcopy(_nvml(state))
    change(_device(reply))
    return json.dumps(reply)


def test_an_nvml_error_string_degrades_that_reading_alone() -> None:
    def fail(device: dict[str, object]) -> None:
        device["power_usage_mw"] = {"error": "NVMLError_Unknown: Unknown Error"}
        device["fan_speed_pct"] = {"error": "NVMLError_NotSupported: Not Supported"}

    snapshot = parse_nvml_json("gpu-a1", _derived_nvml(fail))
    (gpu,) = snapshot.gpus
    assert gpu.power_w is None
    assert (gpu.power_limit_w, gpu.util_pct, gpu.temperature_c) == (700, 100, 55)
    assert gpu.errors == ("power draw: NVMLError_Unknown: Unknown Error",)
    assert snapshot_warning(snapshot) == "GPU 0 power draw: NVMLError_Unknown: Unknown Error"


def test_a_value_of_the_wrong_type_is_na_and_said() -> None:
    def odd(device: dict[str, object]) -> None:
        device["temperature_gpu_c"] = "hot"
        device["utilization"] = {"gpu": True, "memory": 34}
        device["mig_mode"] = [0]

    (gpu,) = parse_nvml_json("n", _derived_nvml(odd)).gpus
    assert (gpu.temperature_c, gpu.util_pct, gpu.mig_mode) == (None, None, None)
    assert gpu.memory_util_pct == 34
    assert set(gpu.errors) == {
        "utilization: unexpected value 'True'",
        "temperature: unexpected value 'hot'",
        "MIG mode: unexpected value '[0]'",
    }


def test_a_gpu_nvml_cannot_open_or_that_is_lost_says_so() -> None:
    reply = copy.deepcopy(_nvml("load"))
    devices = reply["devices"]
    assert isinstance(devices, list)
    lost_field = copy.deepcopy(devices[0])
    lost_field.update(index=2, power_usage_mw={"error": "NVMLError_GpuIsLost: GPU is lost"})
    devices += [{"index": 1, "error": "NVMLError_Unknown: Unknown Error"}, lost_field]
    healthy, unopened, lost = parse_nvml_json("gpu-a1", json.dumps(reply)).gpus
    assert (healthy.lost, healthy.power_w) == (False, pytest.approx(696.737))
    assert (unopened.index, unopened.lost, unopened.name, unopened.util_pct) == (
        1,
        False,
        "unknown GPU",
        None,
    )
    assert unopened.errors == ("device: NVMLError_Unknown: Unknown Error",)
    # One figure says the GPU fell off the bus: none of its figures is trusted.
    assert (lost.index, lost.lost, lost.name) == (2, True, "NVIDIA H100 80GB HBM3")
    assert (lost.util_pct, lost.temperature_c, lost.power_w, lost.processes) == (None,) * 4


def test_mig_ecc_remapping_and_named_processes_from_newer_keys() -> None:
    """Keys the script prints that the H100 captures predate (a derived reply)."""

    def newer(device: dict[str, object]) -> None:
        device["memory"] = {
            "total": 85520809984,
            "free": 0,
            "used": 29751 * MIB,
            "reserved": 480 * MIB,
        }
        device["temperature_memory_c"] = 46
        device["ecc_uncorrected_aggregate"] = 2
        device["ecc_corrected_aggregate"] = 117
        device["retired_pages_single_bit"] = {"error": "NVMLError_NotSupported: Not Supported"}
        device["remapped_rows"] = [3, 1, 1, 0]
        device["pstate"] = 32  # NVML_PSTATE_UNKNOWN
        device["mig_mode"] = [1, 0]
        device["mig_devices"] = [
            {
                "index": 0,
                "uuid": "MIG-1",
                "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                "gpu_instance_id": 1,
                "compute_instance_id": 0,
                "memory": {"total": 40320 * MIB, "free": 0, "used": 12 * MIB},
            },
            {"index": 1, "error": "NVMLError_Unknown: Unknown Error"},
        ]
        device["processes"] = [
            {
                "pid": 9001,
                "usedGpuMemory": None,  # NVML has no per-process figure under MIG
                "gpuInstanceId": 1,
                "computeInstanceId": 0,
                "name": "/usr/bin/python3",
                "user": "vllm",
            }
        ]

    (gpu,) = parse_nvml_json("n", _derived_nvml(newer)).gpus
    assert (gpu.memory_used_mib, gpu.memory_reserved_mib) == (29751, 480)
    assert gpu.memory_temperature_c == 46
    assert (gpu.ecc_uncorrected_aggregate, gpu.ecc_corrected_aggregate) == (2, 117)
    assert gpu.retired_pages_single_bit is None
    assert (gpu.remapped_rows_corrected, gpu.remapped_rows_uncorrected) == (3, 1)
    assert (gpu.remapped_rows_pending, gpu.remapped_rows_failed) == (True, False)
    assert gpu.pstate is None
    assert (gpu.mig_mode, gpu.mig_mode_pending) == ("Enabled", "Disabled")
    (mig,) = gpu.mig_devices
    assert (mig.uuid, mig.gpu_instance_id, mig.memory_total_mib, mig.memory_used_mib) == (
        "MIG-1",
        1,
        40320,
        12,
    )
    assert gpu.processes == (
        GpuProcess(
            9001, "/usr/bin/python3", "vllm", None, gpu_instance_id=1, compute_instance_id=0
        ),
    )
    assert gpu.errors == ("MIG device 1: NVMLError_Unknown: Unknown Error",)


def test_a_reply_cut_anywhere_is_a_one_line_cut_short_error() -> None:
    text = (FIXTURES / "gpu" / "nvml-load.json").read_text()
    for length in range(1, len(text.rstrip())):
        with pytest.raises(GpuQueryError) as info:
            parse_nvml_json("gpu-a1", text[:length])
        message = str(info.value)
        assert message.startswith(f"gpu-a1: NVML reply cut short after {length} characters"), length
        assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "gpu-a1: the NVML script printed nothing"),
        ('{"a": 1 xyz}', "gpu-a1: NVML reply is not JSON: Expecting ',' delimiter at character 8"),
        ("[1, 2]", "gpu-a1: NVML reply is not a JSON object: '[1, 2]'"),
        ('{"driver": "580"}', "gpu-a1: NVML reply has no device list"),
    ],
)
def test_unreadable_replies_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(GpuQueryError) as info:
        parse_nvml_json("gpu-a1", text)
    assert str(info.value) == message


def test_the_scripts_own_nvml_error_is_nvml_unavailable() -> None:
    with pytest.raises(NvmlUnavailable) as info:
        parse_nvml_json("gpu-a1", '{"error": "NVMLError_DriverNotLoaded: Driver Not Loaded"}')
    assert str(info.value) == "gpu-a1: NVML: NVMLError_DriverNotLoaded: Driver Not Loaded"


def test_a_shell_start_up_line_before_the_reply_is_skipped() -> None:
    reply = json.dumps(_nvml("load"))
    (gpu,) = parse_nvml_json("n", f"Welcome to gpu-a1\n{reply}\n").gpus
    assert gpu.util_pct == 100


# --- The script: a constant --------------------------------------------------------------------


def test_the_script_is_one_quoted_constant_word() -> None:
    assert "'" not in NVML_SCRIPT  # so shlex.quote leaves it whole, between single quotes
    assert shlex.split(NVML_COMMAND) == [*NODE_TIMEOUT, "python3", "-c", NVML_SCRIPT]
    assert NVML_COMMAND.endswith(f" python3 -c '{NVML_SCRIPT}'")
    compile(NVML_SCRIPT, "<script>", "exec")


class FakeNode:
    """A node answering commands from a table; each command it was sent is kept."""

    def __init__(self, answers: dict[str, Callable[[], str]]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    async def run(self, command: str) -> str:
        self.commands.append(command)
        return self.answers[command]()


def _failed(command: str, status: int, stdout: str = "", stderr: str = "") -> Callable[[], str]:
    def fail() -> str:
        raise CommandFailed("gpu-a1", command, status, stdout, stderr)

    return fail


def _capture(name: str) -> Callable[[], str]:
    return lambda: (FIXTURES / "gpu" / name).read_text()


def _smi_answers() -> dict[str, Callable[[], str]]:
    return {
        query_command(): _capture("nvidia-smi-query-load.csv"),
        apps_command(): _capture("nvidia-smi-apps-load.csv"),
    }


async def test_the_command_does_not_change_with_the_node() -> None:
    sent = []
    for node in ("gpu-a1", "gpu-b7.example.net"):
        fake = FakeNode({NVML_COMMAND: _capture("nvml-load.json")})
        snapshot = await GpuCollector(node, fake.run).read()
        assert snapshot.gpus[0].node == node
        sent += fake.commands
    assert sent == [NVML_COMMAND, NVML_COMMAND]


# --- The fallback decision --------------------------------------------------------------------

NO_PYNVML = "ModuleNotFoundError: No module named 'pynvml'"
TRACEBACK = (
    f'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n{NO_PYNVML}\n'
)


@pytest.mark.parametrize(
    ("status", "stdout", "stderr", "reason"),
    [
        (1, json.dumps({"error": NO_PYNVML}) + "\n", "", NO_PYNVML),
        (1, "", TRACEBACK, NO_PYNVML),  # an older script or python: the traceback's last line
        (127, "", "bash: python3: command not found\n", "bash: python3: command not found"),
        (
            127,
            "",
            "timeout: failed to run command 'python3': No such file or directory\n",
            "timeout: failed to run command 'python3': No such file or directory",
        ),
        (
            1,
            '{"error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found"}\n',
            "",
            "NVMLError_LibraryNotFound: NVML Shared Library Not Found",
        ),
    ],
)
async def test_a_script_that_cannot_run_moves_the_node_to_nvidia_smi_once(
    status: int, stdout: str, stderr: str, reason: str
) -> None:
    fake = FakeNode({**_smi_answers(), NVML_COMMAND: _failed(NVML_COMMAND, status, stdout, stderr)})
    collector = GpuCollector("gpu-a1", fake.run)
    snapshot = await collector.read()
    assert (snapshot.method, snapshot.fallback_reason) == (NVIDIA_SMI, reason)
    assert (collector.method, collector.fallback_reason) == (NVIDIA_SMI, reason)
    (gpu,) = snapshot.gpus
    assert (gpu.power_w, gpu.clock_events) == (pytest.approx(698.06), ("power cap",))
    assert gpu.processes == (GpuProcess(433, "python3", None, 29742),)
    assert snapshot.driver_version == "580.159.04"
    await collector.read()
    # Decided once: the second poll does not try the script again.
    assert fake.commands == [NVML_COMMAND, *[query_command(), apps_command()] * 2]


async def test_a_working_script_keeps_the_node_on_nvml() -> None:
    fake = FakeNode({NVML_COMMAND: _capture("nvml-load.json")})
    collector = GpuCollector("gpu-a1", fake.run)
    first = await collector.read()
    assert (first.method, first.fallback_reason, collector.method) == (NVML, None, NVML)
    # Later the script fails (the driver was unloaded): that poll's error, not a switch.
    fake.answers[NVML_COMMAND] = _failed(
        NVML_COMMAND, 1, '{"error": "NVMLError_DriverNotLoaded: Driver Not Loaded"}\n'
    )
    with pytest.raises(GpuQueryError) as info:
        await collector.read()
    assert str(info.value) == (
        "gpu-a1: NVML script exited 1: NVMLError_DriverNotLoaded: Driver Not Loaded"
    )
    assert collector.method == NVML
    assert fake.commands == [NVML_COMMAND, NVML_COMMAND]


async def test_a_reply_cut_short_decides_nothing() -> None:
    text = (FIXTURES / "gpu" / "nvml-load.json").read_text()
    fake = FakeNode({NVML_COMMAND: lambda: text[:300]})
    collector = GpuCollector("gpu-a1", fake.run)
    with pytest.raises(GpuQueryError, match=r"^gpu-a1: NVML reply cut short after 300 char"):
        await collector.read()
    assert collector.method is None
    fake.answers[NVML_COMMAND] = lambda: text
    assert (await collector.read()).method == NVML


async def test_a_timeout_or_lost_connection_decides_nothing_and_names_the_script_briefly() -> None:
    def timed_out() -> str:
        raise CommandTimedOut(f"gpu-a1: `{NVML_COMMAND}` timed out after 30s")

    fake = FakeNode({NVML_COMMAND: timed_out})
    collector = GpuCollector("gpu-a1", fake.run)
    with pytest.raises(CommandTimedOut) as info:
        await collector.read()
    assert str(info.value) == f"gpu-a1: `{NVML_COMMAND_NAME}` timed out after 30s"
    fake.answers[NVML_COMMAND] = _failed(NVML_COMMAND, 124)  # coreutils timeout ended it
    with pytest.raises(GpuQueryError, match=r"^gpu-a1: the NVML script timed out on the node$"):
        await collector.read()

    def lost() -> str:
        raise SshError(f"gpu-a1: `{NVML_COMMAND}`: connection lost")

    fake.answers[NVML_COMMAND] = lost
    with pytest.raises(SshError, match=r"^gpu-a1: `python3 -c <NVML snapshot script>`: conn"):
        await collector.read()
    assert collector.method is None
    assert fake.commands == [NVML_COMMAND] * 3


async def test_after_the_fallback_a_malformed_csv_is_that_polls_one_line_error() -> None:
    fake = FakeNode(
        {
            **_smi_answers(),
            NVML_COMMAND: _failed(NVML_COMMAND, 1, "", TRACEBACK),
            query_command(): lambda: "index, name\n0\n",
        }
    )
    with pytest.raises(GpuQueryError) as info:
        await GpuCollector("gpu-a1", fake.run).read()
    assert str(info.value) == "gpu-a1: nvidia-smi row has 1 fields, header has 2"


async def test_a_failed_process_list_keeps_the_figures_and_warns() -> None:
    fake = FakeNode(
        {
            **_smi_answers(),
            NVML_COMMAND: _failed(NVML_COMMAND, 127, "", "bash: python3: command not found"),
            apps_command(): _failed(
                apps_command(), 15, "", "Unable to determine the device handle"
            ),
        }
    )
    snapshot = await GpuCollector("gpu-a1", fake.run).read()
    (gpu,) = snapshot.gpus
    assert (gpu.util_pct, gpu.processes) == (100, None)  # figures shown, processes N/A
    assert snapshot_warning(snapshot) == (
        "process list: nvidia-smi exited 15: Unable to determine the device handle"
    )


# --- The script run for real: python3 -c on this machine ------------------------------------
#
# REPLAY, not a GPU: tests/fixtures/gpu/replay_pynvml.py, installed as `pynvml`, answers each
# NVML call with the value recorded in nvml-load.json. The node's `python3` is this interpreter
# run with -S (no site-packages, so the real nvidia-ml-py of the venv is out of reach).


def _node_path(tmp_path: Path, replay: bool, capture: Path | None = None) -> dict[str, str]:
    """The environment of a fake node: python3 (with or without the replayed pynvml) and an
    nvidia-smi that prints the load captures."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    smi = bin_dir / "nvidia-smi"
    query = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    apps = FIXTURES / "gpu" / "nvidia-smi-apps-load.csv"
    smi.write_text(
        f'#!/bin/sh\ncase "$*" in\n  *--query-gpu=*) exec cat {query};;\n'
        f"  *--query-compute-apps=*) exec cat {apps};;\nesac\nexit 2\n"
    )
    for program in (python3, smi):
        program.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    if replay:
        replay_dir = tmp_path / "replay"
        replay_dir.mkdir(exist_ok=True)
        (replay_dir / "pynvml.py").write_bytes((FIXTURES / "gpu" / "replay_pynvml.py").read_bytes())
        env["PYTHONPATH"] = str(replay_dir)
        env["REPLAY_NVML_JSON"] = str(capture or FIXTURES / "gpu" / "nvml-load.json")
    return env


def local_node(env: dict[str, str]) -> RunCommand:
    """Runs a command line in a local shell, as a node's sshd would."""

    async def run(command: str) -> str:
        process = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        stdout, stderr = await process.communicate()
        out, err = stdout.decode(), stderr.decode()
        if process.returncode:
            raise CommandFailed("gpu-a1", command, process.returncode, out, err)
        return out

    return run


def test_the_replay_uses_nvmls_own_enum_values() -> None:
    names = ast.parse((FIXTURES / "gpu" / "replay_pynvml.py").read_text())
    constants = {
        target.id: node.value.value
        for node in names.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id.startswith(("NVML_", "nvml"))
    }
    assert len(constants) >= 20
    for name, value in constants.items():
        assert getattr(pynvml, name) == value, name


async def test_the_script_replays_the_recorded_load_reading(tmp_path: Path) -> None:
    run = local_node(_node_path(tmp_path, replay=True))
    printed = json.loads(await run(NVML_COMMAND))
    recorded = _nvml("load")
    # The same shape as the capture: every key it holds, with the recorded value.
    for key in set(recorded) - {"taken_at", "pynvml_module", "devices"}:
        assert printed[key] == recorded[key], key
    device, recorded_device = _device(printed), _device(recorded)
    for key in set(recorded_device) - {"processes"}:
        assert device[key] == recorded_device[key], key
    assert printed["pynvml_module"].endswith("/replay/pynvml.py")
    # The collector reads the same GPU from the script as from the capture.
    collector = GpuCollector("gpu-a1", run)
    snapshot = await collector.read()
    assert collector.method == NVML
    (gpu,) = snapshot.gpus
    (expected,) = parse_nvml_json("gpu-a1", json.dumps(recorded)).gpus
    assert gpu == expected
    assert (gpu.util_pct, gpu.power_w, gpu.errors) == (100, pytest.approx(696.737), ())


async def test_the_script_names_processes_and_their_owner(tmp_path: Path) -> None:
    """A derived replay: the recorded process, given this test's own pid and a name."""
    derived = copy.deepcopy(_nvml("load"))
    _device(derived)["processes"] = [
        {"pid": os.getpid(), "usedGpuMemory": 31186747392, "name": "python3"}
    ]
    _device(derived)["mig_mode"] = [1, 1]
    _device(derived)["max_mig_devices"] = 7
    _device(derived)["mig_devices"] = [
        {
            "index": 2,
            "uuid": "MIG-2",
            "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
            "gpu_instance_id": 9,
            "compute_instance_id": 0,
            "memory": {"total": 9856 * MIB, "free": 9856 * MIB, "used": 0},
        }
    ]
    capture = tmp_path / "derived.json"
    capture.write_text(json.dumps(derived))
    snapshot = await GpuCollector("n", local_node(_node_path(tmp_path, True, capture))).read()
    (gpu,) = snapshot.gpus
    assert gpu.processes == (GpuProcess(os.getpid(), "python3", getpass.getuser(), 29742),)
    (mig,) = gpu.mig_devices
    assert (mig.index, mig.uuid, mig.gpu_instance_id, mig.memory_total_mib) == (2, "MIG-2", 9, 9856)
    assert gpu.errors == ()


async def test_without_pynvml_the_script_says_so_and_the_node_falls_back(tmp_path: Path) -> None:
    run = local_node(_node_path(tmp_path, replay=False))
    with pytest.raises(CommandFailed) as info:
        await run(NVML_COMMAND)
    assert info.value.exit_status == 1
    assert json.loads(info.value.stdout) == {"error": NO_PYNVML}
    collector = GpuCollector("gpu-a1", run)
    snapshot = await collector.read()
    assert (snapshot.method, snapshot.fallback_reason) == (NVIDIA_SMI, NO_PYNVML)
    (gpu,) = snapshot.gpus
    assert (gpu.power_w, gpu.memory_used_mib) == (pytest.approx(698.06), 29751)
    assert gpu.processes == (GpuProcess(433, "python3", None, 29742),)


async def test_nvml_failing_to_start_is_reported_by_the_script(tmp_path: Path) -> None:
    capture = tmp_path / "no-driver.json"
    capture.write_text('{"error": "NVMLError_Unknown: Unknown Error"}')
    run = local_node(_node_path(tmp_path, True, capture))
    snapshot = await GpuCollector("gpu-a1", run).read()
    assert (snapshot.method, snapshot.fallback_reason) == (
        NVIDIA_SMI,
        "NVMLError_Unknown: Unknown Error",
    )
