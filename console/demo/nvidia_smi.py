"""``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`` over simulated GPUs.

Output matches the captured H100 (../shared/fixtures/gpu/h100/nvidia-smi-query-*.csv): header
names with unit suffixes (``utilization.gpu [%]``), ``, `` separators, ``[N/A]`` for the fan of
a passively cooled card, two decimals for watts, a 64-bit hex mask for event reasons. Exit
status 2 for a bad argument, as nvidia-smi documents. It only formats readings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from console.demo.gpu_sim import GpuState

INVALID_ARGUMENT = 2
_NOT_AVAILABLE = "[N/A]"


class NvidiaSmiError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.exit_status = INVALID_ARGUMENT


@dataclass(frozen=True)
class _Field:
    unit: str | None  # shown in the header as `` [unit]`` and after values unless nounits
    value: Callable[[GpuState], str | None]  # None: not supported, printed as [N/A]


def _watts(w: float) -> str:
    return f"{w:.2f}"


FIELDS: dict[str, _Field] = {
    "index": _Field(None, lambda g: str(g.index)),
    "uuid": _Field(None, lambda g: g.uuid),
    "name": _Field(None, lambda g: g.name),
    "driver_version": _Field(None, lambda g: g.driver_version),
    "pci.bus_id": _Field(None, lambda g: g.pci_bus_id),
    "utilization.gpu": _Field("%", lambda g: str(g.util_pct)),
    "utilization.memory": _Field("%", lambda g: str(g.memory_util_pct)),
    "memory.total": _Field("MiB", lambda g: str(g.memory_total_mib)),
    "memory.used": _Field("MiB", lambda g: str(g.memory_used_mib)),
    "memory.free": _Field("MiB", lambda g: str(g.memory_free_mib)),
    "temperature.gpu": _Field(None, lambda g: str(round(g.temperature_c))),
    "power.draw": _Field("W", lambda g: _watts(g.power_w)),
    "power.limit": _Field("W", lambda g: _watts(g.power_limit_w)),
    "clocks.current.sm": _Field("MHz", lambda g: str(g.sm_clock_mhz)),
    "clocks.current.memory": _Field("MHz", lambda g: str(g.memory_clock_mhz)),
    "clocks.max.sm": _Field("MHz", lambda g: str(g.max_sm_clock_mhz)),
    "fan.speed": _Field("%", lambda g: None),
    "pstate": _Field(None, lambda g: g.pstate),
    "ecc.errors.uncorrected.volatile.total": _Field(None, lambda g: "0"),
    "ecc.errors.corrected.volatile.total": _Field(None, lambda g: "0"),
    "compute_mode": _Field(None, lambda g: g.compute_mode),
    "mig.mode.current": _Field(None, lambda g: g.mig_mode),
    "clocks_event_reasons.active": _Field(None, lambda g: f"0x{g.event_reasons:016X}"),
}
# Drivers from 535 still answer the mask's old name, as the console's fallback query asks it.
FIELDS["clocks_throttle_reasons.active"] = FIELDS["clocks_event_reasons.active"]


def query_gpus(argv: Sequence[str], gpus: Sequence[GpuState]) -> str:
    """Run ``nvidia-smi`` with ``argv`` (its arguments); raise NvidiaSmiError on bad input."""
    options = _parse_options(argv)
    if "query-gpu" not in options or "format" not in options:
        raise NvidiaSmiError(
            "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
        )
    names = [n.strip() for n in options["query-gpu"].split(",") if n.strip()]
    for name in names:
        if name not in FIELDS:
            raise NvidiaSmiError(f'Field "{name}" is not a valid field to query.')
    format_options = {f.strip() for f in options["format"].split(",")}
    if "csv" not in format_options or not format_options <= {"csv", "noheader", "nounits"}:
        raise NvidiaSmiError(f'"{options["format"]}" is not a valid format.')
    selected = _select(gpus, options.get("id"))
    units = "nounits" not in format_options
    lines = []
    if "noheader" not in format_options:
        lines.append(", ".join(_header(name) for name in names))
    for gpu in selected:
        lines.append(", ".join(_cell(FIELDS[name], gpu, units) for name in names))
    return "".join(line + "\n" for line in lines)


def _parse_options(argv: Sequence[str]) -> dict[str, str]:
    """``--name=value``, ``--name value`` and ``-i value`` into {name: value}."""
    options: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        name = {"-i": "--id"}.get(name, name)
        if name not in ("--query-gpu", "--format", "--id"):
            raise NvidiaSmiError(
                "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
            )
        options[name[2:]] = value if has_value else next(args, "")
    return options


def _select(gpus: Sequence[GpuState], ids: str | None) -> list[GpuState]:
    if ids is None:
        return list(gpus)
    by_index = {str(g.index): g for g in gpus}
    wanted = [i.strip() for i in ids.split(",")]
    missing = [i for i in wanted if i not in by_index]
    if missing:
        raise NvidiaSmiError(f"No devices were found matching the ID {missing[0]!r}.")
    return [by_index[i] for i in wanted]


def _header(name: str) -> str:
    unit = FIELDS[name].unit
    return f"{name} [{unit}]" if unit else name


def _cell(field: _Field, gpu: GpuState, units: bool) -> str:
    value = field.value(gpu)
    if value is None:
        return _NOT_AVAILABLE
    return f"{value} {field.unit}" if units and field.unit else value
