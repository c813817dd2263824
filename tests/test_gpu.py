"""nvidia-smi CSV parsing against the real H100 captures in fixtures/gpu."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backends.gpu import (
    LEGACY_QUERY_FIELDS,
    QUERY_FIELDS,
    GpuQueryError,
    GpuReader,
    parse_query_csv,
    query_command,
)
from tests.conftest import FIXTURES


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


# What a pre-535 driver does with the new field name (its message, as nvidia-smi words it);
# with the old name it prints the same table under the old header.
OLD_DRIVER = """#!/bin/sh
case "$*" in
  *clocks_event_reasons*)
    echo 'Field "clocks_event_reasons.active" is not a valid field to query.' >&2; exit 2;;
esac
sed 's/clocks_event_reasons/clocks_throttle_reasons/' {capture}
"""


async def test_old_driver_is_read_with_the_legacy_field_name(tmp_path: Path) -> None:
    capture = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(OLD_DRIVER.replace("{capture}", str(capture)))
    fake.chmod(0o755)
    commands = []

    async def run(command: str) -> str:  # a real shell, with coreutils' real timeout
        commands.append(command)
        proc = await asyncio.create_subprocess_shell(
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        )
        out, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(err.decode())
        return out.decode()

    reader = GpuReader("gpu-old", run)
    (gpu,) = await reader.read()
    assert gpu.throttle_reasons == 0x4
    assert reader.fields == LEGACY_QUERY_FIELDS
    await reader.read()
    assert len(commands) == 3  # one refusal, then the legacy query every time
