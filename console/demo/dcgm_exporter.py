"""A simulated node's dcgm-exporter: ``GET /metrics`` in its text format, from the GpuSim.

Shaped as dcgm-exporter 4.5.3-4.8.2 renders it (tests/fixtures/dcgm/SOURCES.md): a ``# HELP``
and ``# TYPE`` line per field, then one sample per GPU labelled, in this order, ``gpu``,
``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname`` (that tag's spelling), then
the ``DCGM_FI_DRIVER_VERSION`` label field; integer fields print as integers, floating ones
with six decimals (Go's ``%f``). The HELP sentences are this module's own, not the exporter's.

The fields are those the default counters file enables that the simulation has a value for
(the memory temperature, NVLink, vGPU and DCP profiling fields are left out, as the exporter
leaves out a field it has no value for), plus ``POWER_MGMT_LIMIT``, ``CLOCKS_EVENT_REASONS``
and the volatile ECC totals, as with a counters file that adds them (config.example.yaml says
how). It reads the GPU states; it never changes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from console.demo.gpu_sim import GpuSim, GpuState
from console.demo.http_server import HttpRequest, HttpResponse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # the Prometheus type dcgm-exporter's counters file gives it
    help: str
    value: Callable[[GpuState], float | int]


_FIELDS = (
    _Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock (MHz).", lambda g: g.sm_clock_mhz),
    _Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock (MHz).", lambda g: g.memory_clock_mhz),
    _Field(
        "DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (C).", lambda g: round(g.temperature_c)
    ),
    _Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (W).", lambda g: float(g.power_w)),
    _Field(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Energy since boot (mJ).",
        lambda g: round(g.energy_mj),
    ),
    _Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "PCIe retries.", lambda g: 0),
    _Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (%).", lambda g: g.util_pct),
    _Field(
        "DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (%).", lambda g: g.memory_util_pct
    ),
    _Field("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (%).", lambda g: 0),
    _Field("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (%).", lambda g: 0),
    _Field("DCGM_FI_DEV_XID_ERRORS", "gauge", "Last XID error (0: none).", lambda g: 0),
    _Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer free (MiB).", lambda g: g.memory_free_mib),
    _Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer used (MiB).", lambda g: g.memory_used_mib),
    _Field(
        "DCGM_FI_DEV_FB_RESERVED",
        "gauge",
        "Framebuffer reserved (MiB).",
        lambda g: g.memory_total_mib - g.memory_used_mib - g.memory_free_mib,
    ),
    _Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Rows remapped.", lambda g: 0),
    _Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Rows remapped.", lambda g: 0),
    _Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Row remapping failed.", lambda g: 0),
    # Not in the default counters file: what a counters file that adds them exports.
    _Field(
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "gauge",
        "Power limit (W).",
        lambda g: float(g.power_limit_w),
    ),
    _Field(
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "gauge",
        "Clock event reasons (bit mask).",
        lambda g: g.event_reasons,
    ),
    _Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Single-bit ECC errors.", lambda g: 0),
    _Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Double-bit ECC errors.", lambda g: 0),
)


def _value(value: float | int) -> str:
    return f"{value:f}" if isinstance(value, float) else str(value)


def render(gpus: GpuSim, hostname: str) -> bytes:
    """The exporter's whole ``/metrics`` text for these GPUs."""
    labels = [
        ",".join(
            (
                f'gpu="{g.index}"',
                f'UUID="{g.uuid}"',
                f'pci_bus_id="{g.pci_bus_id}"',
                f'device="nvidia{g.index}"',
                f'modelName="{g.name}"',
                f'Hostname="{hostname}"',
                f'DCGM_FI_DRIVER_VERSION="{g.driver_version}"',
            )
        )
        for g in gpus.gpus
    ]
    lines = []
    for field in _FIELDS:
        lines += [f"# HELP {field.name} {field.help}", f"# TYPE {field.name} {field.kind}"]
        lines += [
            f"{field.name}{{{label}}} {_value(field.value(g))}"
            for g, label in zip(gpus.gpus, labels, strict=True)
        ]
    return ("\n".join(lines) + "\n").encode()


class DcgmExporter:
    """The routes of one node's exporter (it listens on :9400 on a real node)."""

    def __init__(self, gpus: GpuSim, hostname: str) -> None:
        self._gpus = gpus
        self._hostname = hostname

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path != "/metrics":
            return HttpResponse(404, b"404 page not found\n")
        if request.method != "GET":
            return HttpResponse(405, b"Method Not Allowed\n")
        return HttpResponse(200, render(self._gpus, self._hostname), {"content-type": CONTENT_TYPE})
