"""nvidia-smi CSV parsing against the real H100 captures in fixtures/gpu."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pynvml
import pytest

from backends.gpu import (
    CLOCK_EVENT_WORDS,
    QUERY_FIELDS,
    GpuQueryError,
    clock_event_words,
    parse_query_csv,
    query_command,
)
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
    copies = [p for p in (FIXTURES / "gpu").iterdir() if p.name != "SOURCES.md"]
    assert len(copies) >= 6
    for copy in copies:
        assert (SHARED_H100 / copy.name).read_bytes() == copy.read_bytes(), copy.name
