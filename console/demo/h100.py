"""The captured H100 the simulated GPUs are modelled on, read from the packaged CSVs.

``h100-query-idle.csv`` and ``h100-query-load.csv`` are real ``nvidia-smi --query-gpu`` output
(copies of ../shared/fixtures/gpu/h100; see SOURCES.md there): the idle row gives the card's
fixed values and its idle point, the load row (a matmul loop at 100% utilisation) its load
point. Only reads those files; it computes nothing over time.
"""

from __future__ import annotations

from importlib import resources


def _captured(name: str) -> dict[str, str]:
    """The GPU row of a packaged capture, keyed by field name without its unit suffix."""
    header, row = resources.files("console.demo").joinpath(name).read_text().splitlines()[:2]
    fields = [h.split(" [")[0] for h in header.split(", ")]
    return dict(zip(fields, row.split(", "), strict=True))


_IDLE = _captured("h100-query-idle.csv")
_LOAD = _captured("h100-query-load.csv")

NAME = _IDLE["name"]
DRIVER_VERSION = _IDLE["driver_version"]
PSTATE = _IDLE["pstate"]
COMPUTE_MODE = _IDLE["compute_mode"]
MIG_MODE = _IDLE["mig.mode.current"]
MEMORY_TOTAL_MIB = int(_IDLE["memory.total"])
# What the driver keeps back: total - used - free.
RESERVED_MIB = MEMORY_TOTAL_MIB - int(_IDLE["memory.used"]) - int(_IDLE["memory.free"])
POWER_LIMIT_W = float(_IDLE["power.limit"])
IDLE_POWER_W = float(_IDLE["power.draw"])
LOAD_POWER_W = float(_LOAD["power.draw"])
IDLE_TEMP_C = float(_IDLE["temperature.gpu"])
LOAD_TEMP_C = float(_LOAD["temperature.gpu"])
IDLE_SM_MHZ = int(_IDLE["clocks.current.sm"])
LOAD_SM_MHZ = int(_LOAD["clocks.current.sm"])  # held down by the power cap at full load
MAX_SM_MHZ = int(_IDLE["clocks.max.sm"])
MEMORY_CLOCK_MHZ = int(_IDLE["clocks.current.memory"])
