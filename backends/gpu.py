"""GPU readings of a node, over SSH: NVML through the node's own python3, or nvidia-smi.

Two ways to read one node, decided once per node by :class:`GpuCollector`:

* ``nvml``: :data:`NVML_SCRIPT`, a constant Python script sent as ``python3 -c`` (no file on
  the node, nothing interpolated), reads every device through the node's nvidia-ml-py
  (``pynvml``) and prints one JSON object shaped like the H100 captures
  ``tests/fixtures/gpu/nvml-*.json``; :func:`parse_nvml_json` reads it.
* ``nvidia-smi``: ``--query-gpu=<fields> --format=csv,nounits`` (header row with unit suffixes
  such as ``utilization.gpu [%]``, ``", "`` separators, ``[N/A]`` for fields a card does not
  report), read by :func:`parse_query_csv`, and ``--query-compute-apps`` for the processes.

Either way the result is :class:`~console.models.GpuReading` records. A field that cannot be
read becomes ``None`` (shown as N/A), never 0; a GPU that fell off the bus is a reading with
``lost=True``; the clock-event mask is decoded to the words an engineer knows. Raw facts only:
what counts as an alarm is decided above. Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import json
import logging
import math
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping

from backends.remote_errors import CommandFailed, CommandTimedOut, SshError
from console.models import GpuProcess, GpuReading, GpuSnapshot, MigDevice

log = logging.getLogger(__name__)

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
                memory_clock_mhz=_number(values.get("clocks.current.memory")),
                fan_pct=_number(values.get("fan.speed")),
                pstate=_text(values.get("pstate")),
                ecc_uncorrected=_integer(values.get("ecc.errors.uncorrected.volatile.total")),
                ecc_corrected=_integer(values.get("ecc.errors.corrected.volatile.total")),
                throttle_reasons=throttle,
                clock_events=clock_event_words(throttle),
                mig_mode=_text(values.get("mig.mode.current")),
                driver_version=_text(values.get("driver_version")),
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


# --- The process list, from nvidia-smi -------------------------------------------------------

# The field list of the real capture tests/fixtures/gpu/nvidia-smi-apps-load.csv.
APPS_FIELDS: tuple[str, ...] = ("pid", "process_name", "used_memory", "gpu_uuid")


def apps_command() -> str:
    return shlex.join(
        [
            *NODE_TIMEOUT,
            "nvidia-smi",
            f"--query-compute-apps={','.join(APPS_FIELDS)}",
            "--format=csv,nounits",
        ]
    )


def parse_apps_csv(node: str, text: str) -> dict[str, tuple[GpuProcess, ...]]:
    """``--query-compute-apps`` output (with its header row): each GPU's processes, by UUID.

    The header names the ``used_memory`` field ``used_gpu_memory [MiB]``; nvidia-smi does not
    know the owner, so ``user`` is None.
    """
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r]
    if not rows:
        raise GpuQueryError(f"{node}: nvidia-smi printed no process list")
    header = [_field_name(cell) for cell in rows[0]]
    if "pid" not in header or "gpu_uuid" not in header:
        raise GpuQueryError(f"{node}: nvidia-smi process list has no header row: {text[:80]!r}")
    by_gpu: dict[str, list[GpuProcess]] = {}
    for row in rows[1:]:
        if len(row) != len(header):
            raise GpuQueryError(
                f"{node}: nvidia-smi process row has {len(row)} fields, header has {len(header)}"
            )
        values = dict(zip(header, row, strict=True))
        pid, uuid = _integer(values.get("pid")), _text(values.get("gpu_uuid"))
        if pid is None or uuid is None:
            raise GpuQueryError(f"{node}: nvidia-smi process row without a pid or GPU: {row!r}")
        used = values.get("used_gpu_memory", values.get("used_memory"))
        by_gpu.setdefault(uuid, []).append(
            GpuProcess(
                pid=pid,
                name=_text(values.get("process_name")),
                user=None,
                memory_used_mib=_number(used),
            )
        )
    return {uuid: tuple(processes) for uuid, processes in by_gpu.items()}


# --- NVML, through the node's own python3 -----------------------------------------------------

# Run on the node as ``python3 -c NVML_SCRIPT``: a constant (nothing of the node or the config
# goes into it) without a single quote, so that the node's shell gets it as one quoted word,
# and needing no file on the node. Python 3.6 or later; only the standard library and pynvml.
#
# It prints one JSON object shaped like the H100 captures tests/fixtures/gpu/nvml-*.json: one
# key per NVML call (the names nvitop reads them with), plus keys those captures predate:
# temperature_memory_c, ecc_{un,}corrected_aggregate, retired_pages_{single,double}_bit,
# remapped_rows ([corrected, uncorrected, pending, failed]), mig_devices (only when MIG is on),
# "reserved" in memory (NVML's v2 memory info, where "used" leaves it out, as nvidia-smi does)
# and each process as an object with its name and owner (the captures hold pynvml's printed
# form of each). A call that fails is {"error": "<NVMLError class>: <message>"} in place of its
# value; the script exits 1 with {"error": ...} alone when pynvml or NVML cannot be used at all.
#
# NVML's enum values are written as numbers (pynvml's names come and go, the C values stay):
# NVML_TEMPERATURE_GPU 0; field NVML_FI_DEV_MEMORY_TEMP 82; NVML_CLOCK_SM 1, NVML_CLOCK_MEM 2;
# NVML_MEMORY_ERROR_TYPE_CORRECTED 0, _UNCORRECTED 1; NVML_VOLATILE_ECC 0, NVML_AGGREGATE_ECC 1;
# NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS 0, _DOUBLE_BIT_ECC_ERROR 1;
# NVML_PCIE_UTIL_TX_BYTES 0, _RX_BYTES 1. tests/test_gpu.py checks them against pynvml's.
NVML_SCRIPT = """\
import json, os, pwd, sys, time


def err(e):
    return {"error": "%s: %s" % (type(e).__name__, e)}


def text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def call(nv, name, *args):
    try:
        return text(getattr(nv, name)(*args))
    except Exception as e:
        return err(e)


def first(nv, names, *args):
    got = {"error": "AttributeError: no %s in this pynvml" % names[0]}
    for name in names:
        if hasattr(nv, name):
            got = call(nv, name, *args)
            if not (isinstance(got, dict) and "FunctionNotFound" in got["error"]):
                break
    return got


def fields(s):
    if isinstance(s, dict):
        return s
    return dict((n, text(getattr(s, n))) for n, _ in s._fields_)


def memory(nv, h):
    try:
        m = nv.nvmlDeviceGetMemoryInfo(h, nv.nvmlMemory_v2)
        return {"total": m.total, "free": m.free, "used": m.used, "reserved": m.reserved}
    except Exception:
        pass
    try:
        m = nv.nvmlDeviceGetMemoryInfo(h)
        return {"total": m.total, "free": m.free, "used": m.used}
    except Exception as e:
        return err(e)


def field(nv, h, fid):
    try:
        v = nv.nvmlDeviceGetFieldValues(h, [fid])[0]
        if v.nvmlReturn:
            raise nv.NVMLError(v.nvmlReturn)
        kinds = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
        return getattr(v.value, kinds[v.valueType])
    except Exception as e:
        return err(e)


def count(pages):
    return len(pages) if isinstance(pages, list) else pages


def owner(pid):
    try:
        uid = os.stat("/proc/%d" % pid).st_uid
    except Exception:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except Exception:
        return str(uid)


def processes(nv, h):
    try:
        found = nv.nvmlDeviceGetComputeRunningProcesses(h)
    except Exception as e:
        return err(e)
    return [
        {
            "pid": p.pid,
            "usedGpuMemory": p.usedGpuMemory,
            "gpuInstanceId": getattr(p, "gpuInstanceId", None),
            "computeInstanceId": getattr(p, "computeInstanceId", None),
            "name": call(nv, "nvmlSystemGetProcessName", p.pid),
            "user": owner(p.pid),
        }
        for p in found
    ]


def mig_devices(nv, h):
    slots = call(nv, "nvmlDeviceGetMaxMigDeviceCount", h)
    if isinstance(slots, dict):
        return slots
    out = []
    for i in range(slots):
        try:
            m = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        except Exception as e:
            if type(e).__name__ != "NVMLError_NotFound":
                out.append(dict(err(e), index=i))
            continue
        out.append({
            "index": i,
            "uuid": call(nv, "nvmlDeviceGetUUID", m),
            "name": call(nv, "nvmlDeviceGetName", m),
            "gpu_instance_id": call(nv, "nvmlDeviceGetGpuInstanceId", m),
            "compute_instance_id": call(nv, "nvmlDeviceGetComputeInstanceId", m),
            "memory": memory(nv, m),
        })
    return out


def device(nv, i):
    try:
        h = nv.nvmlDeviceGetHandleByIndex(i)
    except Exception as e:
        return dict(err(e), index=i)

    def q(name, *args):
        return call(nv, name, h, *args)

    use = q("nvmlDeviceGetUtilizationRates")
    pci = q("nvmlDeviceGetPciInfo")
    d = {
        "index": i,
        "name": q("nvmlDeviceGetName"),
        "uuid": q("nvmlDeviceGetUUID"),
        "serial": q("nvmlDeviceGetSerial"),
        "pci_bus_id": fields(pci),
        "utilization": use if isinstance(use, dict) else {"gpu": use.gpu, "memory": use.memory},
        "memory": memory(nv, h),
        "temperature_gpu_c": first(
            nv, ("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"), h, 0
        ),
        "temperature_memory_c": field(nv, h, 82),
        "power_usage_mw": q("nvmlDeviceGetPowerUsage"),
        "power_limit_mw": q("nvmlDeviceGetPowerManagementLimit"),
        "sm_clock_mhz": q("nvmlDeviceGetClockInfo", 1),
        "mem_clock_mhz": q("nvmlDeviceGetClockInfo", 2),
        "max_sm_clock_mhz": q("nvmlDeviceGetMaxClockInfo", 1),
        "fan_speed_pct": q("nvmlDeviceGetFanSpeed"),
        "pstate": q("nvmlDeviceGetPerformanceState"),
        "ecc_uncorrected_volatile": q("nvmlDeviceGetTotalEccErrors", 1, 0),
        "ecc_corrected_volatile": q("nvmlDeviceGetTotalEccErrors", 0, 0),
        "ecc_uncorrected_aggregate": q("nvmlDeviceGetTotalEccErrors", 1, 1),
        "ecc_corrected_aggregate": q("nvmlDeviceGetTotalEccErrors", 0, 1),
        "retired_pages_pending": q("nvmlDeviceGetRetiredPagesPendingStatus"),
        "retired_pages_single_bit": count(q("nvmlDeviceGetRetiredPages", 0)),
        "retired_pages_double_bit": count(q("nvmlDeviceGetRetiredPages", 1)),
        "remapped_rows": q("nvmlDeviceGetRemappedRows"),
        "throttle_reasons": first(
            nv,
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
            h,
        ),
        "pcie_tx_kbps": q("nvmlDeviceGetPcieThroughput", 0),
        "pcie_rx_kbps": q("nvmlDeviceGetPcieThroughput", 1),
        "mig_mode": q("nvmlDeviceGetMigMode"),
        "compute_mode": q("nvmlDeviceGetComputeMode"),
        "processes": processes(nv, h),
    }
    if isinstance(d["mig_mode"], list) and d["mig_mode"][:1] == [1]:
        d["mig_devices"] = mig_devices(nv, h)
    return d


def main(nv=None):
    if nv is None:
        try:
            import pynvml as nv
        except Exception as e:
            return err(e), 1
    try:
        nv.nvmlInit()
    except Exception as e:
        return err(e), 1
    try:
        return {
            "taken_at": time.time(),
            "driver": call(nv, "nvmlSystemGetDriverVersion"),
            "nvml": call(nv, "nvmlSystemGetNVMLVersion"),
            "cuda_driver": call(nv, "nvmlSystemGetCudaDriverVersion"),
            "pynvml_module": getattr(nv, "__file__", None),
            "devices": [device(nv, i) for i in range(nv.nvmlDeviceGetCount())],
        }, 0
    except Exception as e:
        return err(e), 1
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


if __name__ == "__main__":
    result, status = main()
    print(json.dumps(result, default=str))
    sys.exit(status)
"""

NVML_COMMAND = shlex.join([*NODE_TIMEOUT, "python3", "-c", NVML_SCRIPT])
# How messages name that command: its text is a page long.
NVML_COMMAND_NAME = "python3 -c <NVML snapshot script>"

NVML = "nvml"
NVIDIA_SMI = "nvidia-smi"

_MIB = 1024 * 1024
_UINT_MAX = 0xFFFFFFFF  # NVML's "none" for the MIG instance ids of a process without MIG
_PSTATE_UNKNOWN = 32
_MIG_MODES = {0: "Disabled", 1: "Enabled"}
# Errors that only say the GPU (or its driver) has no such reading: N/A, not a fault. NotFound
# is a process that ended between the list and the look-up of its name.
_NOT_REPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NotFound")
_GPU_IS_LOST = "NVMLError_GpuIsLost"
_MESSAGE_CHARS = 200
_PARTIAL_TOKEN = re.compile(r"[\w.+-]*")


class NvmlUnavailable(GpuQueryError):
    """The script ran but could not use NVML: no pynvml, no driver, NVML refused to start."""


def _one_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return (lines[0] if lines else "no message")[:_MESSAGE_CHARS]


def _load_reply(node: str, text: str) -> object:
    if not text.strip():
        raise GpuQueryError(f"{node}: the NVML script printed nothing")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        error = exc
    # A node's shell start-up files may print first: the script's JSON is the last line.
    last = next((ln for ln in reversed(text.splitlines()) if ln.startswith("{")), None)
    if last is not None and last != text.strip():
        try:
            return json.loads(last)
        except json.JSONDecodeError:
            pass
    # Cut short: what follows the error is at most part of a number or a word (tru...).
    if error.msg.startswith("Unterminated string") or _PARTIAL_TOKEN.fullmatch(
        text[error.pos :].rstrip()
    ):
        raise GpuQueryError(
            f"{node}: NVML reply cut short after {len(text)} characters ({error.msg})"
        ) from None
    raise GpuQueryError(
        f"{node}: NVML reply is not JSON: {error.msg} at character {error.pos}"
    ) from None


def parse_nvml_json(node: str, text: str) -> GpuSnapshot:
    """The NVML script's reply (or a capture of the same shape) as readings.

    Raises :class:`NvmlUnavailable` for the script's own "cannot use NVML" answer and
    :class:`GpuQueryError` for a reply that cannot be read (cut short, not JSON), each with a
    one-line message naming the node.
    """
    reply = _load_reply(node, text)
    if not isinstance(reply, dict):
        raise GpuQueryError(f"{node}: NVML reply is not a JSON object: {text[:80]!r}")
    if "devices" not in reply and "error" in reply:
        raise NvmlUnavailable(f"{node}: NVML: {_one_line(reply['error'])}")
    devices = reply.get("devices")
    if not isinstance(devices, list):
        raise GpuQueryError(f"{node}: NVML reply has no device list")
    driver = reply.get("driver")
    driver = driver if isinstance(driver, str) else None
    gpus = tuple(_nvml_reading(node, pos, entry, driver) for pos, entry in enumerate(devices))
    return GpuSnapshot(node=node, method=NVML, gpus=gpus, driver_version=driver)


def _json_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Entry:
    """One JSON object of the reply: values by key, each failed read noted once, in words."""

    def __init__(self, values: Mapping[str, object], errors: list[str] | None = None) -> None:
        self._values = values
        self.errors: list[str] = [] if errors is None else errors

    def value(self, key: str, label: str) -> object:
        value = self._values.get(key)
        if isinstance(value, dict) and "error" in value:
            error = _one_line(value["error"])
            if not error.startswith(_NOT_REPORTED):
                self.errors.append(f"{label}: {error}")
            return None
        return value

    def _odd(self, label: str, value: object) -> None:
        self.errors.append(f"{label}: unexpected value {str(value)[:40]!r}")

    def number(self, key: str, label: str, scale: float = 1.0) -> float | None:
        value = self.value(key, label)
        if value is None:
            return None
        number = _json_number(value)
        if number is None:
            self._odd(label, value)
            return None
        return number / scale

    def integer(self, key: str, label: str) -> int | None:
        number = self.number(key, label)
        return None if number is None else int(number)

    def text(self, key: str, label: str) -> str | None:
        value = self.value(key, label)
        if value is None or isinstance(value, str):
            return value or None
        self._odd(label, value)
        return None

    def numbers(self, key: str, label: str, count: int) -> tuple[int | None, ...]:
        """A list of ``count`` integers (``[current, pending]``); Nones when not read."""
        value = self.value(key, label)
        if value is None:
            return (None,) * count
        if not isinstance(value, list) or len(value) != count:
            self._odd(label, value)
            return (None,) * count
        numbers = [_json_number(v) for v in value]
        if None in numbers:
            self._odd(label, value)
            return (None,) * count
        return tuple(int(n) for n in numbers if n is not None)

    def sub(self, key: str, label: str) -> _Entry:
        """A nested object (``memory``, ``utilization``); an empty one when not read."""
        value = self.value(key, label)
        if isinstance(value, dict):
            return _Entry(value, self.errors)
        if value is not None:
            self._odd(label, value)
        return _Entry({}, self.errors)


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _instance_id(value: object) -> int | None:
    number = _json_number(value)
    return None if number is None or number == _UINT_MAX else int(number)


def _nvml_reading(node: str, position: int, entry: object, driver: str | None) -> GpuReading:
    if not isinstance(entry, dict):
        return _unread(node, position, driver, f"device entry not understood: {str(entry)[:60]!r}")
    index = entry.get("index")
    index = index if isinstance(index, int) and not isinstance(index, bool) else position
    if "error" in entry and "name" not in entry:  # NVML gave no handle for it
        return _unread(node, index, driver, f"device: {_one_line(entry['error'])}")
    e = _Entry(entry)
    uuid = e.text("uuid", "UUID") or f"{node}:{index}"
    name = e.text("name", "name") or "unknown GPU"
    use = e.sub("utilization", "utilization")
    memory = e.sub("memory", "memory")
    pstate = e.integer("pstate", "P-state")
    throttle = e.integer("throttle_reasons", "clock-event reasons")
    mig_now, mig_next = e.numbers("mig_mode", "MIG mode", 2)
    remap = e.numbers("remapped_rows", "remapped rows", 4)
    reading = GpuReading(
        node=node,
        index=index,
        uuid=uuid,
        name=name,
        util_pct=use.number("gpu", "utilization"),
        memory_util_pct=use.number("memory", "memory utilization"),
        memory_total_mib=memory.number("total", "memory total", _MIB),
        memory_used_mib=memory.number("used", "memory used", _MIB),
        memory_reserved_mib=memory.number("reserved", "memory reserved", _MIB),
        temperature_c=e.number("temperature_gpu_c", "temperature"),
        memory_temperature_c=e.number("temperature_memory_c", "memory temperature"),
        power_w=e.number("power_usage_mw", "power draw", 1000),
        power_limit_w=e.number("power_limit_mw", "power limit", 1000),
        sm_clock_mhz=e.number("sm_clock_mhz", "SM clock"),
        memory_clock_mhz=e.number("mem_clock_mhz", "memory clock"),
        fan_pct=e.number("fan_speed_pct", "fan"),
        pstate=None if pstate is None or pstate == _PSTATE_UNKNOWN else f"P{pstate}",
        ecc_uncorrected=e.integer("ecc_uncorrected_volatile", "ECC uncorrected"),
        ecc_corrected=e.integer("ecc_corrected_volatile", "ECC corrected"),
        ecc_uncorrected_aggregate=e.integer("ecc_uncorrected_aggregate", "ECC uncorrected (life)"),
        ecc_corrected_aggregate=e.integer("ecc_corrected_aggregate", "ECC corrected (life)"),
        retired_pages_single_bit=e.integer("retired_pages_single_bit", "retired pages"),
        retired_pages_double_bit=e.integer("retired_pages_double_bit", "retired pages"),
        retired_pages_pending=_flag(e.integer("retired_pages_pending", "retired pages pending")),
        remapped_rows_corrected=remap[0],
        remapped_rows_uncorrected=remap[1],
        remapped_rows_pending=_flag(remap[2]),
        remapped_rows_failed=_flag(remap[3]),
        throttle_reasons=throttle,
        clock_events=clock_event_words(throttle),
        mig_mode=None if mig_now is None else _MIG_MODES.get(mig_now),
        mig_mode_pending=None if mig_next is None else _MIG_MODES.get(mig_next),
        mig_devices=_mig_devices(e),
        processes=_processes(e),
        driver_version=driver,
    )
    errors = tuple(dict.fromkeys(e.errors))  # one line per failure, even if read twice
    if any(_GPU_IS_LOST in error for error in errors):
        # As with nvidia-smi's [GPU is lost]: who it was, and no figure to trust.
        return dataclasses.replace(
            _lost_reading(node, index, {}), uuid=uuid, name=name, driver_version=driver
        )
    return dataclasses.replace(reading, errors=errors)


def _unread(node: str, index: int, driver: str | None, error: str) -> GpuReading:
    """A device NVML could not open: a reading that says why, lost if NVML says so."""
    reading = _lost_reading(node, index, {})
    return dataclasses.replace(
        reading, lost=_GPU_IS_LOST in error, errors=(error,), driver_version=driver
    )


def _processes(e: _Entry) -> tuple[GpuProcess, ...] | None:
    listed = e.value("processes", "processes")
    if listed is None:
        return None
    if not isinstance(listed, list):
        e.errors.append(f"processes: unexpected value {str(listed)[:40]!r}")
        return None
    processes = []
    for item in listed:
        values = item
        if isinstance(item, str) and len(item) < 1000:
            # The captures hold pynvml's printed form of each: "{'pid': 433, ...}".
            try:
                values = ast.literal_eval(item)
            except (ValueError, SyntaxError):
                values = None
        pid = values.get("pid") if isinstance(values, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(values, dict):
            e.errors.append(f"process entry not understood: {str(item)[:60]!r}")
            continue
        p = _Entry(values, e.errors)
        user = values.get("user")
        processes.append(
            GpuProcess(
                pid=pid,
                name=p.text("name", f"process {pid} name"),
                user=user if isinstance(user, str) and user else None,
                memory_used_mib=p.number("usedGpuMemory", f"process {pid} memory", _MIB),
                gpu_instance_id=_instance_id(values.get("gpuInstanceId")),
                compute_instance_id=_instance_id(values.get("computeInstanceId")),
            )
        )
    return tuple(processes)


def _mig_devices(e: _Entry) -> tuple[MigDevice, ...]:
    listed = e.value("mig_devices", "MIG devices")
    if listed is None:
        return ()
    if not isinstance(listed, list):
        e.errors.append(f"MIG devices: unexpected value {str(listed)[:40]!r}")
        return ()
    devices = []
    for position, item in enumerate(listed):
        if not isinstance(item, dict):
            e.errors.append(f"MIG device entry not understood: {str(item)[:60]!r}")
            continue
        index = item.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else position
        if "error" in item and "uuid" not in item:
            e.errors.append(f"MIG device {index}: {_one_line(item['error'])}")
            continue
        m = _Entry(item, e.errors)
        memory = m.sub("memory", f"MIG device {index} memory")
        devices.append(
            MigDevice(
                index=index,
                uuid=m.text("uuid", f"MIG device {index} UUID"),
                name=m.text("name", f"MIG device {index} name"),
                gpu_instance_id=m.integer("gpu_instance_id", f"MIG device {index} GPU instance"),
                compute_instance_id=m.integer(
                    "compute_instance_id", f"MIG device {index} compute instance"
                ),
                memory_total_mib=memory.number("total", f"MIG device {index} memory", _MIB),
                memory_used_mib=memory.number("used", f"MIG device {index} memory", _MIB),
            )
        )
    return tuple(devices)


# --- One node: which tool, decided once ---------------------------------------------------------

# coreutils timeout's statuses when it ended the command: 124 (TERM), 137 (KILL after -k).
_TIMED_OUT_STATUSES = frozenset({124, 137})


def _failure_line(exc: CommandFailed) -> str:
    """Why a command failed, in one line: the script's own JSON error, else stderr's last line
    (where a Python traceback names its exception), else stdout's first."""
    last = next((ln for ln in reversed(exc.stdout.splitlines()) if ln.startswith("{")), None)
    if last is not None:
        try:
            reply = json.loads(last)
        except json.JSONDecodeError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            return _one_line(reply["error"])
    for stream in (exc.stderr.splitlines()[::-1], exc.stdout.splitlines()):
        lines = [line.strip() for line in stream if line.strip()]
        if lines:
            return lines[0][:_MESSAGE_CHARS]
    return "no output"


def _renamed(exc: SshError) -> SshError:
    """The same failure, naming the script briefly."""
    message = str(exc).replace(NVML_COMMAND, NVML_COMMAND_NAME)
    return CommandTimedOut(message) if isinstance(exc, CommandTimedOut) else SshError(message)


class GpuCollector:
    """Reads one node's GPUs: NVML through the node's python3 if it can, else nvidia-smi.

    The first answer decides, and the choice is kept (``method``): the script failing to run
    (no python3, no pynvml, NVML refusing to start: no driver, a version mismatch) moves the
    node to nvidia-smi for good, with the reason in ``fallback_reason``. A lost connection, a
    timeout or a reply cut short decides nothing: that poll fails with a one-line message and
    the next tries the script again. Once on NVML, a failing script is that poll's error.
    """

    def __init__(self, node: str, run: RunCommand) -> None:
        self.node = node
        self._run = run
        self.method: str | None = None  # NVML or NVIDIA_SMI, once decided
        self.fallback_reason: str | None = None
        self._smi = GpuReader(node, run)

    async def read(self) -> GpuSnapshot:
        if self.method == NVIDIA_SMI:
            return await self._read_smi()
        try:
            text = await self._run(NVML_COMMAND)
        except CommandFailed as exc:
            if exc.exit_status in _TIMED_OUT_STATUSES:
                raise GpuQueryError(f"{self.node}: the NVML script timed out on the node") from None
            reason = _failure_line(exc)
            if self.method == NVML:
                raise GpuQueryError(
                    f"{self.node}: NVML script exited {exc.exit_status}: {reason}"
                ) from None
            return await self._fall_back(reason)
        except SshError as exc:
            raise _renamed(exc) from None
        try:
            snapshot = parse_nvml_json(self.node, text)
        except NvmlUnavailable as exc:
            if self.method == NVML:
                raise
            return await self._fall_back(str(exc).removeprefix(f"{self.node}: NVML: "))
        self.method = NVML
        return snapshot

    async def _fall_back(self, reason: str) -> GpuSnapshot:
        self.method = NVIDIA_SMI
        self.fallback_reason = reason
        log.info("%s: reading GPUs with nvidia-smi, not NVML: %s", self.node, reason)
        return await self._read_smi()

    async def _read_smi(self) -> GpuSnapshot:
        gpus = await self._smi.read()
        warnings = []
        try:
            processes = parse_apps_csv(self.node, await self._run(apps_command()))
        except CommandFailed as exc:
            warnings.append(
                f"process list: nvidia-smi exited {exc.exit_status}: {_failure_line(exc)}"
            )
        except (SshError, GpuQueryError) as exc:  # the figures were read: keep them
            warnings.append(f"process list: {str(exc).removeprefix(f'{self.node}: ')}")
        else:
            gpus = [
                g if g.lost else dataclasses.replace(g, processes=processes.get(g.uuid, ()))
                for g in gpus
            ]
        return GpuSnapshot(
            node=self.node,
            method=NVIDIA_SMI,
            gpus=tuple(gpus),
            driver_version=next((g.driver_version for g in gpus if g.driver_version), None),
            fallback_reason=self.fallback_reason,
            warnings=tuple(warnings),
        )


def snapshot_warning(snapshot: GpuSnapshot) -> str | None:
    """What a poll could not read, as one line for the source's warning; None if nothing."""
    parts = [*snapshot.warnings]
    parts += [f"GPU {g.index} {error}" for g in snapshot.gpus for error in g.errors]
    return "; ".join(parts) or None
