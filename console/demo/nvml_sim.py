"""A pynvml for the demo's GPUs, so that the console's own NVML script runs on a demo node.

A demo node with ``python3`` and nvidia-ml-py answers ``python3 -c <the console's NVML snapshot
script>`` (and no other script) by running that very script against this module instead of
the real pynvml: the console's NVML path, parser included, is exercised as on a real node.
Values come from the simulated GPUs (which follow the captured H100); what the simulation does
not model raises NVMLError_NotSupported, as NVML does for a reading a GPU lacks. Only the calls
the script makes are here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from console.demo import h100
from console.demo.gpu_sim import GpuState

_MIB = 1024 * 1024
_NO_INSTANCE = 0xFFFFFFFF  # NVML's "none" for the MIG ids of a process without MIG
# From the H100 capture (tests/fixtures/gpu/nvml-idle.json): NVML 13 with this driver.
_CUDA_DRIVER = 13000


class NVMLError(Exception):
    """As pynvml's: the subclass's name says which error (the script reports that name)."""


class NVMLError_NotSupported(NVMLError):
    def __str__(self) -> str:
        return "Not Supported"


@dataclass(frozen=True)
class SimProcess:
    pid: int
    name: str
    user: str
    gpu_index: int
    used_mib: int


def _not_supported(*_: object) -> Any:
    raise NVMLError_NotSupported()


class SimNvml:
    """The module the script is handed: a node's GPUs and the processes on them (its method
    names are pynvml's)."""

    NVMLError = NVMLError
    nvmlMemory_v2 = 0x02000028  # pynvml's version tag for nvmlMemory_v2_t

    def __init__(self, gpus: Sequence[GpuState], processes: Sequence[SimProcess]) -> None:
        self._gpus = list(gpus)
        self._processes = list(processes)
        self.users = {p.pid: p.user for p in processes}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml"):
            return _not_supported  # a reading the simulation does not model
        raise AttributeError(name)

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return h100.DRIVER_VERSION

    def nvmlSystemGetNVMLVersion(self) -> str:
        return f"13.{h100.DRIVER_VERSION}"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return _CUDA_DRIVER

    def nvmlDeviceGetCount(self) -> int:
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> GpuState:
        return self._gpus[index]

    def nvmlDeviceGetName(self, gpu: GpuState) -> str:
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: GpuState) -> str:
        return gpu.uuid

    def nvmlDeviceGetPciInfo(self, gpu: GpuState) -> dict[str, str]:
        return {"busId": gpu.pci_bus_id}

    def nvmlDeviceGetUtilizationRates(self, gpu: GpuState) -> SimpleNamespace:
        return SimpleNamespace(gpu=gpu.util_pct, memory=gpu.memory_util_pct)

    def nvmlDeviceGetMemoryInfo(self, gpu: GpuState, version: int | None = None) -> SimpleNamespace:
        # v2 leaves the driver's reservation out of "used", as nvidia-smi does; v1 counts it.
        reserved = h100.RESERVED_MIB * _MIB
        used = gpu.memory_used_mib * _MIB
        return SimpleNamespace(
            total=gpu.memory_total_mib * _MIB,
            free=gpu.memory_free_mib * _MIB,
            used=used if version == self.nvmlMemory_v2 else used + reserved,
            reserved=reserved,
        )

    def nvmlDeviceGetTemperature(self, gpu: GpuState, sensor: int) -> int:
        return round(gpu.temperature_c)

    def nvmlDeviceGetPowerUsage(self, gpu: GpuState) -> int:
        return round(gpu.power_w * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, gpu: GpuState) -> int:
        return round(gpu.power_limit_w * 1000)

    def nvmlDeviceGetClockInfo(self, gpu: GpuState, clock: int) -> int:
        return gpu.sm_clock_mhz if clock == 1 else gpu.memory_clock_mhz

    def nvmlDeviceGetMaxClockInfo(self, gpu: GpuState, clock: int) -> int:
        return gpu.max_sm_clock_mhz

    def nvmlDeviceGetPerformanceState(self, gpu: GpuState) -> int:
        return int(gpu.pstate.removeprefix("P"))

    def nvmlDeviceGetTotalEccErrors(self, gpu: GpuState, error_type: int, counter: int) -> int:
        return 0

    def nvmlDeviceGetRemappedRows(self, gpu: GpuState) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)  # corrected, uncorrected, pending, failed

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: GpuState) -> int:
        return gpu.event_reasons

    def nvmlDeviceGetMigMode(self, gpu: GpuState) -> list[int]:
        mode = 1 if gpu.mig_mode == "Enabled" else 0
        return [mode, mode]

    def nvmlDeviceGetComputeMode(self, gpu: GpuState) -> int:
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: GpuState) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.used_mib * _MIB,
                gpuInstanceId=_NO_INSTANCE,
                computeInstanceId=_NO_INSTANCE,
            )
            for p in self._processes
            if p.gpu_index == gpu.index
        ]

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        return next(p.name for p in self._processes if p.pid == pid)


def run_script(script: str, nvml: SimNvml) -> tuple[str, int]:
    """The script's stdout and exit status, run against ``nvml`` in a namespace of its own.

    Process owners come from the simulation: the script's own lookup reads /proc of the
    machine it runs on, which here is the console's, not the node's.
    """
    namespace: dict[str, Any] = {"__name__": "demo_nvml_snapshot"}
    exec(compile(script, "<NVML snapshot script>", "exec"), namespace)
    namespace["owner"] = nvml.users.get
    result, status = namespace["main"](nvml)
    return json.dumps(result, default=str) + "\n", status
