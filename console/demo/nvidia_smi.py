"""``nvidia-smi`` over simulated GPUs: the table, ``-L``, ``-q``, ``--query-gpu`` and
``--query-compute-apps``.

CSV output matches the captured H100 (../shared/fixtures/gpu/h100/nvidia-smi-query-*.csv and
nvidia-smi-apps-load.csv): header names with unit suffixes (``utilization.gpu [%]``), ``, ``
separators, ``[N/A]`` for the fan of a passively cooled card, two decimals for watts, a 64-bit
hex mask for event reasons. The bare table follows the captured ``nvidia-smi`` of that card
(nvidia-smi-and-versions.txt) column for column. Exit status 2 for a bad argument, as
nvidia-smi documents. It only formats readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from console.demo import h100
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


@dataclass(frozen=True)
class ComputeApp:
    """A process holding memory on one GPU, as ``--query-compute-apps`` lists it."""

    pid: int
    name: str
    gpu: GpuState
    used_mib: int


@dataclass(frozen=True)
class _AppField:
    header: str
    value: Callable[[ComputeApp], str]


# The capture's header names ``used_memory`` ``used_gpu_memory [MiB]``.
APP_FIELDS: dict[str, _AppField] = {
    "pid": _AppField("pid", lambda a: str(a.pid)),
    "process_name": _AppField("process_name", lambda a: a.name),
    "name": _AppField("process_name", lambda a: a.name),
    "used_memory": _AppField("used_gpu_memory [MiB]", lambda a: str(a.used_mib)),
    "used_gpu_memory": _AppField("used_gpu_memory [MiB]", lambda a: str(a.used_mib)),
    "gpu_uuid": _AppField("gpu_uuid", lambda a: a.gpu.uuid),
    "gpu_name": _AppField("gpu_name", lambda a: a.gpu.name),
    "gpu_bus_id": _AppField("gpu_bus_id", lambda a: a.gpu.pci_bus_id),
}
_BAD_COMBINATION = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."
_VALUE_OPTIONS = {"-i": "--id", "--id": "--id", "--query-gpu": "--query-gpu"}
_VALUE_OPTIONS |= {"--format": "--format", "--query-compute-apps": "--query-compute-apps"}
_FLAGS = {"-L": "--list-gpus", "--list-gpus": "--list-gpus", "-q": "--query", "--query": "--query"}


def nvidia_smi(argv: Sequence[str], gpus: Sequence[GpuState], apps: Sequence[ComputeApp]) -> str:
    """Run ``nvidia-smi`` with ``argv`` (its arguments); raise NvidiaSmiError on bad input."""
    options = _parse_options(argv)
    modes = {"--query-gpu", "--query-compute-apps", "--list-gpus", "--query"} & set(options)
    if len(modes) > 1 or (
        bool(modes & {"--query-gpu", "--query-compute-apps"}) != ("--format" in options)
    ):
        raise NvidiaSmiError(_BAD_COMBINATION)
    selected = _select(gpus, options.get("--id"))
    if "--query-gpu" in options:
        return query_gpus(options["--query-gpu"], options["--format"], selected)
    if "--query-compute-apps" in options:
        chosen = [a for a in apps if any(a.gpu is g for g in selected)]
        return _query_apps(options["--query-compute-apps"], options["--format"], chosen)
    if "--list-gpus" in options:
        return "".join(f"GPU {g.index}: {g.name} (UUID: {g.uuid})\n" for g in selected)
    if "--query" in options:
        return _details(selected, apps, len(gpus))
    return _table(selected, apps)


def query_gpus(fields: str, output_format: str, gpus: Sequence[GpuState]) -> str:
    """``--query-gpu=FIELDS --format=FORMAT`` for ``gpus``."""
    names = [n.strip() for n in fields.split(",") if n.strip()]
    for name in names:
        if name not in FIELDS:
            raise NvidiaSmiError(f'Field "{name}" is not a valid field to query.')
    header, units = _format(output_format)
    lines = [", ".join(_header(name) for name in names)] if header else []
    for gpu in gpus:
        lines.append(", ".join(_cell(FIELDS[name], gpu, units) for name in names))
    return "".join(line + "\n" for line in lines)


def _query_apps(fields: str, output_format: str, apps: Sequence[ComputeApp]) -> str:
    names = [n.strip() for n in fields.split(",") if n.strip()]
    for name in names:
        if name not in APP_FIELDS:
            raise NvidiaSmiError(f'Field "{name}" is not a valid field to query.')
    header, units = _format(output_format)
    lines = [", ".join(APP_FIELDS[n].header for n in names)] if header else []
    for app in apps:
        cells = [APP_FIELDS[n].value(app) for n in names]
        if units:
            cells = [
                f"{c} MiB" if APP_FIELDS[n].header.endswith("[MiB]") else c
                for n, c in zip(names, cells, strict=True)
            ]
        lines.append(", ".join(cells))
    return "".join(line + "\n" for line in lines)


def _format(output_format: str) -> tuple[bool, bool]:
    """(header, units) for ``--format=csv[,noheader][,nounits]``."""
    options = {f.strip() for f in output_format.split(",")}
    if "csv" not in options or not options <= {"csv", "noheader", "nounits"}:
        raise NvidiaSmiError(f'"{output_format}" is not a valid format.')
    return "noheader" not in options, "nounits" not in options


def _parse_options(argv: Sequence[str]) -> dict[str, str]:
    """``--name=value``, ``--name value``, ``-i value`` and flags into {--name: value}."""
    options: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in _FLAGS and not has_value:
            options[_FLAGS[name]] = ""
        elif name in _VALUE_OPTIONS:
            options[_VALUE_OPTIONS[name]] = value if has_value else next(args, "")
        else:
            raise NvidiaSmiError(_BAD_COMBINATION)
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


# -- the bare table ---------------------------------------------------------------------------
# Transcribed from the capture (nvidia-smi-and-versions.txt): its borders, headings and column
# widths (41, 24 and 22 characters between the bars). The capture lists no process, so the
# process rows are aligned under its process headings.
CUDA_VERSION = "13.0"
_RULE = "+" + "-" * 89 + "+"
_GPU_RULE = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
_GPU_HEAD = (
    _GPU_RULE,
    "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
    "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
    "|                                         |                        |               MIG M. |",
    "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
)
_PROCESS_HEAD = (
    _RULE,
    "| Processes:                                                                              |",
    "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
    "|        ID   ID                                                               Usage      |",
    "|" + "=" * 89 + "|",
)


def _table(gpus: Sequence[GpuState], apps: Sequence[ComputeApp]) -> str:
    version = f"NVIDIA-SMI {h100.DRIVER_VERSION}"
    driver = f"Driver Version: {h100.DRIVER_VERSION}"
    lines = [
        # The capture's day has two digits; padding a one-digit day as asctime does is assumed.
        time.asctime().ljust(31),
        _RULE,
        f"| {version:<34}{driver:<31}CUDA Version: {CUDA_VERSION:<9}|",
        *_GPU_HEAD,
    ]
    for gpu in gpus:
        fan = "N/A"  # passively cooled, as on the captured card
        power = f"{round(gpu.power_w)}W"
        cap = f"{round(gpu.power_limit_w)}W"
        memory = f"{gpu.memory_used_mib}MiB / {gpu.memory_total_mib:>6}MiB"
        lines += [
            f"| {gpu.index:>3}  {gpu.name:<29}{'On':>4}  |"
            f"{gpu.pci_bus_id:>19} {'Off':>3} |{'0':>21} |",
            f"| {fan:>3}{round(gpu.temperature_c):>5}C{gpu.pstate:>6}{power:>16} / {cap:>5} |"
            f"{memory:>23} |{f'{gpu.util_pct}%':>8}{gpu.compute_mode:>13} |",
            f"|{'':41}|{'':24}|{gpu.mig_mode:>21} |",
            _GPU_RULE,
        ]
    lines += ["", *_PROCESS_HEAD]
    if not apps:
        lines.append(f"|  {'No running processes found':<87}|")
    for app in apps:
        memory = f"{app.used_mib}MiB"
        lines.append(
            f"|{app.gpu.index:>5}{'N/A':>5}{'N/A':>5}{app.pid:>17}{'C':>7}   "
            f"{app.name:<36}{memory:>10} |"
        )
    lines.append(_RULE)
    return "".join(line + "\n" for line in lines)


# -- nvidia-smi -q ----------------------------------------------------------------------------
# No text capture of ``-q`` exists here: the layout (a banner, sections indented by four
# spaces, names padded to 42 columns before ``: ``) is shaped after NVIDIA's nvidia-smi
# documentation; names and values follow the ``-q -x`` capture (nvidia-smi-q-load.xml).
_EVENT_REASONS = (
    ("Idle", 0x1),
    ("Applications Clocks Setting", 0x2),
    ("SW Power Cap", 0x4),
    ("HW Slowdown", 0x8),
    ("Sync Boost", 0x10),
    ("SW Thermal Slowdown", 0x20),
    ("HW Thermal Slowdown", 0x40),
    ("HW Power Brake Slowdown", 0x80),
    ("Display Clock Setting", 0x100),
)


def _details(gpus: Sequence[GpuState], apps: Sequence[ComputeApp], attached: int) -> str:
    lines = [
        "",
        "==============NVSMI LOG==============",
        "",
        _kv(0, "Timestamp", time.asctime()),
        _kv(0, "Driver Version", h100.DRIVER_VERSION),
        _kv(0, "CUDA Version", CUDA_VERSION),
        "",
        _kv(0, "Attached GPUs", str(attached)),
    ]
    for gpu in gpus:
        reasons = [
            _kv(2, name, "Active" if gpu.event_reasons & bit else "Not Active")
            for name, bit in _EVENT_REASONS
        ]
        reserved = gpu.memory_total_mib - gpu.memory_used_mib - gpu.memory_free_mib
        lines += [
            f"GPU {gpu.pci_bus_id}",
            _kv(1, "Product Name", gpu.name),
            _kv(1, "Product Brand", "NVIDIA"),
            _kv(1, "Product Architecture", "Hopper"),
            _kv(1, "Persistence Mode", "Enabled"),
            _kv(1, "MIG Mode", ""),
            _kv(2, "Current", gpu.mig_mode),
            _kv(2, "Pending", gpu.mig_mode),
            _kv(1, "GPU UUID", gpu.uuid),
            _kv(1, "Minor Number", str(gpu.index)),
            _kv(1, "Performance State", gpu.pstate),
            _kv(1, "Clocks Event Reasons", ""),
            *reasons,
            _kv(1, "FB Memory Usage", ""),
            _kv(2, "Total", f"{gpu.memory_total_mib} MiB"),
            _kv(2, "Reserved", f"{reserved} MiB"),
            _kv(2, "Used", f"{gpu.memory_used_mib} MiB"),
            _kv(2, "Free", f"{gpu.memory_free_mib} MiB"),
            _kv(1, "Compute Mode", gpu.compute_mode),
            _kv(1, "Utilization", ""),
            _kv(2, "GPU", f"{gpu.util_pct} %"),
            _kv(2, "Memory", f"{gpu.memory_util_pct} %"),
            _kv(1, "ECC Errors", ""),
            _kv(2, "Volatile", ""),
            _kv(3, "DRAM Correctable", "0"),
            _kv(3, "DRAM Uncorrectable", "0"),
            _kv(1, "Temperature", ""),
            _kv(2, "GPU Current Temp", f"{round(gpu.temperature_c)} C"),
            _kv(1, "GPU Power Readings", ""),
            _kv(2, "Instant Power Draw", f"{_watts(gpu.power_w)} W"),
            _kv(2, "Current Power Limit", f"{_watts(gpu.power_limit_w)} W"),
            _kv(1, "Clocks", ""),
            _kv(2, "Graphics", f"{gpu.sm_clock_mhz} MHz"),
            _kv(2, "SM", f"{gpu.sm_clock_mhz} MHz"),
            _kv(2, "Memory", f"{gpu.memory_clock_mhz} MHz"),
            _kv(1, "Max Clocks", ""),
            _kv(2, "SM", f"{gpu.max_sm_clock_mhz} MHz"),
            _kv(1, "Processes", "" if any(a.gpu is gpu for a in apps) else "None"),
        ]
        for app in (a for a in apps if a.gpu is gpu):
            lines += [
                _kv(2, "GPU instance ID", "N/A"),
                _kv(2, "Compute instance ID", "N/A"),
                _kv(2, "Process ID", str(app.pid)),
                _kv(3, "Type", "C"),
                _kv(3, "Name", app.name),
                _kv(3, "Used GPU Memory", f"{app.used_mib} MiB"),
            ]
        lines.append("")
    return "".join(line + "\n" for line in lines)


def _kv(depth: int, name: str, value: str) -> str:
    key = ("    " * depth + name).ljust(44)
    return f"{key}: {value}".rstrip() if value else f"{key}".rstrip()
