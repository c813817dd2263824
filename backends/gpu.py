"""GPU readings from ``nvidia-smi --query-gpu`` CSV, run on a node over SSH.

Parses the exact output of ``nvidia-smi --query-gpu=<fields> --format=csv,nounits`` (header
row with unit suffixes such as ``utilization.gpu [%]``, ``", "`` separators, ``[N/A]`` for
fields a card does not report) into :class:`~console.models.GpuReading` records. A field that
cannot be read becomes ``None`` (shown as N/A), never 0; a GPU that fell off the bus
(``[GPU is lost]``) is a reading with ``lost=True``. The clock-event mask is decoded to the
words an engineer knows. Raw facts only: what counts as an alarm is decided above.
Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shlex
from collections.abc import Awaitable, Callable

from backends.ssh import CommandFailed
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
# with the new one: nvidia-smi prints `Field "clocks_event_reasons.active" is not a valid field
# to query.` and a blank line on stdout, nothing on stderr, and exits 2 (its "invalid argument"
# status).
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


_INVALID_ARGUMENT = 2
_EVENT_FIELD_REFUSED = re.compile(
    r'Field ["\u201c]clocks_event_reasons\.active["\u201d] is not a valid field to query'
)

# nvidia-smi prints these instead of a value for fields it cannot read.
_GPU_LOST = "[GPU is lost]"
_NOT_AVAILABLE = {"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", _GPU_LOST, ""}

# NVML's nvmlClocksEventReason* bits (nvmlClocksThrottleReason* before driver 535, same
# values; BoardLimit and Reliability exist only under the old name), lowest bit first.
CLOCK_EVENT_WORDS: tuple[tuple[int, str], ...] = (
    (0x1, "idle"),  # GpuIdle
    (0x2, "app clocks"),  # ApplicationsClocksSetting
    (0x4, "power cap"),  # SwPowerCap
    (0x8, "HW slowdown"),  # HwSlowdown
    (0x10, "sync boost"),  # SyncBoost
    (0x20, "SW thermal"),  # SwThermalSlowdown
    (0x40, "HW thermal"),  # HwThermalSlowdown
    (0x80, "power brake"),  # HwPowerBrakeSlowdown
    (0x100, "display clocks"),  # DisplayClockSetting
    (0x200, "board limit"),  # BoardLimit
    (0x400, "reliability"),  # Reliability
)
_KNOWN_EVENT_BITS = sum(bit for bit, _ in CLOCK_EVENT_WORDS)


def clock_event_words(mask: int | None) -> tuple[str, ...] | None:
    """The reasons in a clock-event mask as words; a bit NVML does not name yet is shown in
    hex rather than dropped. ``()`` for 0 (nothing slows the clocks), None for unknown."""
    if mask is None:
        return None
    words = [word for bit, word in CLOCK_EVENT_WORDS if mask & bit]
    if mask & ~_KNOWN_EVENT_BITS:
        words.append(f"0x{mask & ~_KNOWN_EVENT_BITS:x}")
    return tuple(words)


class GpuQueryError(Exception):
    """nvidia-smi output that cannot be understood at all."""


def _field_name(header_cell: str) -> str:
    """``"utilization.gpu [%]"`` -> ``"utilization.gpu"``."""
    return header_cell.split(" [", 1)[0].strip()


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in _NOT_AVAILABLE:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    # "nan" and "inf" parse as floats, but no GPU reading is one: it is not known.
    return number if math.isfinite(number) else None


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
    for position, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise GpuQueryError(
                f"{node}: nvidia-smi row has {len(row)} fields, header has {len(header)}"
            )
        values = dict(zip(header, row, strict=True))
        lost = any(cell.strip() == _GPU_LOST for cell in row)
        index = _integer(values.get("index"))
        if index is None and lost:
            index = position  # nvidia-smi lists every GPU in index order
        if index is None:
            raise GpuQueryError(f"{node}: nvidia-smi row without a GPU index: {row!r}")
        if lost:
            readings.append(_lost_reading(node, index, values))
            continue
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
                ecc_corrected=_integer(values.get("ecc.errors.corrected.volatile.total")),
                throttle_reasons=throttle,
                clock_events=clock_event_words(throttle),
            )
        )
    return readings


def _lost_reading(node: str, index: int, values: dict[str, str]) -> GpuReading:
    """A GPU that fell off the bus: who it was, if nvidia-smi still says, and nothing else
    (a figure printed beside ``[GPU is lost]`` is not one to trust)."""
    return GpuReading(
        node=node,
        index=index,
        uuid=_text(values.get("uuid")) or f"{node}:{index}",
        name=_text(values.get("name")) or "unknown GPU",
        util_pct=None,
        memory_util_pct=None,
        memory_total_mib=None,
        memory_used_mib=None,
        temperature_c=None,
        power_w=None,
        power_limit_w=None,
        lost=True,
    )


# A command runner (SshPool.runner(node)): takes a shell command line, returns stdout; raises
# CommandFailed, with the command's output and exit status, when it exits non-zero, and
# another exception when it could not run to its end.
RunCommand = Callable[[str], Awaitable[str]]


def _refuses_event_field(exc: CommandFailed) -> bool:
    """nvidia-smi's own answer that the driver predates the field's new name."""
    return exc.exit_status == _INVALID_ARGUMENT and any(
        _EVENT_FIELD_REFUSED.search(text) for text in (exc.stdout, exc.stderr)
    )


class GpuReader:
    """Reads one node's GPUs, remembering whether its driver needs the legacy field names."""

    def __init__(self, node: str, run: RunCommand) -> None:
        self.node = node
        self._run = run
        self.fields = QUERY_FIELDS

    async def read(self) -> list[GpuReading]:
        try:
            output = await self._run(query_command(self.fields))
        except CommandFailed as exc:
            # Only nvidia-smi's own refusal switches: a timeout or a lost connection says
            # nothing about the driver (and their messages name the field, in the command).
            if self.fields is QUERY_FIELDS and _refuses_event_field(exc):
                self.fields = LEGACY_QUERY_FIELDS
                output = await self._run(query_command(self.fields))
            else:
                raise
        return parse_query_csv(self.node, output)
