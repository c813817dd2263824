"""nvidia-smi CSV parsing against the real H100 captures in fixtures/gpu."""

from __future__ import annotations

import pytest

from backends.gpu import NVIDIA_SMI_COMMAND, QUERY_FIELDS, GpuQueryError, parse_query_csv
from tests.conftest import FIXTURES


def test_query_fields_match_the_captured_header() -> None:
    header = (FIXTURES / "gpu" / "nvidia-smi-query-load.csv").read_text().splitlines()[0]
    names = [cell.split(" [")[0] for cell in header.split(", ")]
    assert tuple(names) == QUERY_FIELDS
    assert NVIDIA_SMI_COMMAND.startswith("nvidia-smi --query-gpu=index,uuid,name,")
    assert NVIDIA_SMI_COMMAND.endswith(" --format=csv,nounits")


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
    assert gpu.fan_pct is None  # "[N/A]" on a passively cooled card is unknown, not 0


def test_idle_capture() -> None:
    text = (FIXTURES / "gpu" / "nvidia-smi-query-idle.csv").read_text()
    (gpu,) = parse_query_csv("n", text)
    assert gpu.util_pct == 0
    assert gpu.memory_used_mib == 0
    assert gpu.throttle_reasons == 0x1  # GPU idle


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
