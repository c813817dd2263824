"""The console's own host (the bastion it runs on) as a source: CPU, memory, load, the disk that
holds the store, and its GPUs if it has any.

Figures come from psutil; GPUs from NVML in this process, through the installed nvidia-ml-py,
running the very script the nodes run (:data:`backends.gpu.NVML_SCRIPT`) and read by the same
parser, so a GPU reads the same here as on a node. No driver, no GPUs or NVML failing is a
note on the record, never an exception; a figure psutil cannot give is None. Blocking calls
run in a thread. Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from backends.gpu import NVML_SCRIPT, GpuQueryError, NvmlUnavailable, parse_nvml_json
from console.models import GpuReading, HostHealth

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
NVML_TIMEOUT_S = 20.0  # the nodes' script runs under the same limit

# The script's main(nv=None) -> (reply, exit status), loaded once without running it.
_NvmlMain = Callable[[ModuleType | None], tuple[Any, int]]


def _load_nvml_main() -> _NvmlMain:
    namespace: dict[str, Any] = {"__name__": "llmops_nvml_snapshot"}
    exec(compile(NVML_SCRIPT, "<NVML snapshot script>", "exec"), namespace)
    main: _NvmlMain = namespace["main"]
    return main


_nvml_main = _load_nvml_main()


def nvml_note(error: str) -> str:
    """Why the host has no GPU readings, in words, from the script's error line."""
    if error.startswith(("ModuleNotFoundError", "ImportError")):
        return "no nvidia-ml-py (pynvml) installed"
    if "LibraryNotFound" in error:
        return "no NVIDIA driver (NVML library not found)"
    if "DriverNotLoaded" in error:
        return "no NVIDIA driver loaded"
    return f"NVML: {error}"


def store_folder(store_path: str | os.PathLike[str] | None) -> Path:
    """The folder whose disk is watched: the store's, or its nearest parent that exists yet
    (the store is created on first use); the home folder when no store is configured."""
    folder = Path(store_path).expanduser().parent if store_path else Path.home()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


class HostCollector:
    """Reads the console's own host; one instance per console, polled like any source."""

    def __init__(
        self,
        store_path: str | os.PathLike[str] | None,
        *,
        name: str | None = None,
        nvml: ModuleType | None = None,
        nvml_timeout_s: float = NVML_TIMEOUT_S,
    ) -> None:
        self.name = name or socket.gethostname()
        self.disk_path = store_folder(store_path)
        self._nvml = nvml  # None: import pynvml; tests pass a module
        self._nvml_timeout_s = nvml_timeout_s
        self._nvml_call: asyncio.Future[tuple[Any, int]] | None = None
        psutil.cpu_percent(None)  # starts the count: each reading is the % since the last

    async def read(self) -> HostHealth:
        figures, errors = await asyncio.to_thread(self._figures)
        gpus, note = await self._gpus()
        return HostHealth(
            host=self.name,
            taken_at=time.time(),
            disk_path=str(self.disk_path),
            gpus=gpus,
            gpu_note=note,
            errors=tuple(errors),
            **figures,
        )

    def _figures(self) -> tuple[dict[str, Any], list[str]]:
        figures: dict[str, Any] = dict.fromkeys(
            (
                "cpu_pct",
                "cpu_count",
                "memory_used_mib",
                "memory_total_mib",
                "memory_pct",
                "disk_used_gib",
                "disk_total_gib",
                "disk_pct",
                "load_1m",
                "load_5m",
                "load_15m",
            )
        )
        errors = []
        try:
            figures["cpu_pct"] = float(psutil.cpu_percent(None))
            figures["cpu_count"] = psutil.cpu_count()
        except Exception as exc:  # each figure alone: the others still show
            errors.append(f"CPU: {exc}")
        try:
            memory = psutil.virtual_memory()
            figures["memory_total_mib"] = memory.total / _MIB
            figures["memory_used_mib"] = (memory.total - memory.available) / _MIB
            figures["memory_pct"] = float(memory.percent)
        except Exception as exc:
            errors.append(f"memory: {exc}")
        try:
            disk = psutil.disk_usage(str(self.disk_path))
            figures["disk_total_gib"] = disk.total / _GIB
            figures["disk_used_gib"] = disk.used / _GIB
            figures["disk_pct"] = float(disk.percent)
        except Exception as exc:
            errors.append(f"disk {self.disk_path}: {exc}")
        try:
            figures["load_1m"], figures["load_5m"], figures["load_15m"] = psutil.getloadavg()
        except Exception as exc:
            errors.append(f"load average: {exc}")
        return figures, errors

    async def _gpus(self) -> tuple[tuple[GpuReading, ...], str | None]:
        if self._nvml_call is not None and not self._nvml_call.done():
            # A wedged GPU can hang NVML, and a thread cannot be stopped: wait for it.
            return (), "NVML has not answered an earlier read yet"
        self._nvml_call = asyncio.ensure_future(asyncio.to_thread(_nvml_main, self._nvml))
        try:
            reply, _ = await asyncio.wait_for(asyncio.shield(self._nvml_call), self._nvml_timeout_s)
        except TimeoutError:
            return (), f"NVML did not answer in {self._nvml_timeout_s:g}s"
        except Exception as exc:  # the script catches NVML's errors; this is a bug in it
            return (), f"NVML: {type(exc).__name__}: {exc}"
        try:
            snapshot = parse_nvml_json(self.name, json.dumps(reply, default=str))
        except NvmlUnavailable as exc:
            return (), nvml_note(str(exc).removeprefix(f"{self.name}: NVML: "))
        except GpuQueryError as exc:
            return (), str(exc).removeprefix(f"{self.name}: ")
        if not snapshot.gpus:
            return (), "no NVIDIA GPUs"
        return snapshot.gpus, None
