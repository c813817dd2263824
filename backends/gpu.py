"""GPU readings from ``nvidia-smi --query-gpu`` CSV, run on a node over SSH.

Parses the exact output of ``nvidia-smi --query-gpu=<fields> --format=csv,nounits`` (header
row with unit suffixes such as ``utilization.gpu [%]``, ``", "`` separators, ``[N/A]`` for
fields a card does not report) into :class:`~console.models.GpuReading` records. A field that
cannot be read becomes ``None`` (shown as N/A), never 0. Knows nothing of the UI.
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Awaitable, Callable

from console.models import GpuReading

# The field list of the real H100 capture in tests/fixtures/gpu; order is kept in the command.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "driver_version",
    "pci.bus_id",
    "utilization.gpu",
    "utilization.memory",
    "memory.total",
    "memory.used",
    "memory.free",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "clocks.current.sm",
    "clocks.current.memory",
    "clocks.max.sm",
    "fan.speed",
    "pstate",
    "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.volatile.total",
    "compute_mode",
    "mig.mode.current",
    "clocks_event_reasons.active",
)

# Drivers before 535 call the throttle mask by its old name and reject the whole query
# with the new one.
LEGACY_QUERY_FIELDS = tuple(
    "clocks_throttle_reasons.active" if f == "clocks_event_reasons.active" else f
    for f in QUERY_FIELDS
)

# A wedged GPU can hang nvidia-smi: coreutils' timeout ends it on the node, where cancelling
# the SSH channel alone would leave it running.
NODE_TIMEOUT = ("timeout", "-k", "5", "20")


def query_command(fields: tuple[str, ...] = QUERY_FIELDS) -> str:
    return shlex.join(
        [*NODE_TIMEOUT, "nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,nounits"]
    )


# nvidia-smi prints these instead of a value for fields it cannot read.
_NOT_AVAILABLE = {"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[GPU is lost]", ""}


class GpuQueryError(Exception):
    """nvidia-smi output that cannot be understood at all."""


def _field_name(header_cell: str) -> str:
    """``"utilization.gpu [%]"`` -> ``"utilization.gpu"``."""
    return header_cell.split(" [", 1)[0].strip()


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in _NOT_AVAILABLE:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _integer(value: str | None) -> int | None:
    number = _number(value)
    if number is not None:
        return int(number)
    if value and value.strip().lower().startswith("0x"):
        try:
            return int(value.strip(), 16)
        except ValueError:
            return None
    return None


def _text(value: str | None) -> str | None:
    if value is None or value.strip() in _NOT_AVAILABLE:
        return None
    return value.strip()


def parse_query_csv(node: str, text: str) -> list[GpuReading]:
    """Parse ``--format=csv,nounits`` output (with its header row) into readings."""
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r]
    if not rows:
        raise GpuQueryError(f"{node}: nvidia-smi printed nothing")
    header = [_field_name(cell) for cell in rows[0]]
    if "index" not in header:
        raise GpuQueryError(f"{node}: nvidia-smi output has no header row: {text[:80]!r}")
    readings = []
    for row in rows[1:]:
        if len(row) != len(header):
            raise GpuQueryError(
                f"{node}: nvidia-smi row has {len(row)} fields, header has {len(header)}"
            )
        values = dict(zip(header, row, strict=True))
        index = _integer(values.get("index"))
        if index is None:
            raise GpuQueryError(f"{node}: nvidia-smi row without a GPU index: {row!r}")
        throttle = _integer(
            values.get("clocks_event_reasons.active", values.get("clocks_throttle_reasons.active"))
        )
        readings.append(
            GpuReading(
                node=node,
                index=index,
                uuid=_text(values.get("uuid")) or f"{node}:{index}",
                name=_text(values.get("name")) or "unknown GPU",
                util_pct=_number(values.get("utilization.gpu")),
                memory_util_pct=_number(values.get("utilization.memory")),
                memory_total_mib=_number(values.get("memory.total")),
                memory_used_mib=_number(values.get("memory.used")),
                temperature_c=_number(values.get("temperature.gpu")),
                power_w=_number(values.get("power.draw")),
                power_limit_w=_number(values.get("power.limit")),
                sm_clock_mhz=_number(values.get("clocks.current.sm")),
                fan_pct=_number(values.get("fan.speed")),
                pstate=_text(values.get("pstate")),
                ecc_uncorrected=_integer(values.get("ecc.errors.uncorrected.volatile.total")),
                throttle_reasons=throttle,
            )
        )
    return readings


# A command runner: takes a shell command line, returns stdout; raises on failure.
RunCommand = Callable[[str], Awaitable[str]]


class GpuReader:
    """Reads one node's GPUs, remembering whether its driver needs the legacy field names."""

    def __init__(self, node: str, run: RunCommand) -> None:
        self.node = node
        self._run = run
        self.fields = QUERY_FIELDS

    async def read(self) -> list[GpuReading]:
        try:
            output = await self._run(query_command(self.fields))
        except Exception as exc:
            if self.fields is QUERY_FIELDS and "clocks_event_reasons" in str(exc):
                self.fields = LEGACY_QUERY_FIELDS
                output = await self._run(query_command(self.fields))
            else:
                raise
        return parse_query_csv(self.node, output)
