"""One reading of this machine's GPUs through the console's own collectors, for
bench/gpu_check.sh: ``nvml`` runs the NVML snapshot script the console sends to a node (here,
locally) and parses its JSON; ``smi`` runs the same ``nvidia-smi --query-gpu`` command and
parses its CSV. Needs only the standard library and, for ``nvml``, nvidia-ml-py on the path.

    python -m bench.gpu_probe nvml|smi
"""

from __future__ import annotations

import subprocess
import sys

from backends.gpu import (
    NVML_SCRIPT,
    GpuQueryError,
    NvmlUnavailable,
    parse_nvml_json,
    parse_query_csv,
    query_command,
)
from console.models import GpuReading


def _row(g: GpuReading) -> str:
    def shown(value: object, unit: str = "") -> str:
        return (
            "N/A"
            if value is None
            else f"{value:g}{unit}"
            if isinstance(value, float)
            else f"{value}{unit}"
        )

    events = "N/A" if g.clock_events is None else (", ".join(g.clock_events) or "none")
    return (
        f"gpu {g.index} {g.name}: util {shown(g.util_pct, '%')}, "
        f"mem {shown(g.memory_used_mib)}/{shown(g.memory_total_mib)} MiB, "
        f"temp {shown(g.temperature_c, ' C')} (mem {shown(g.memory_temperature_c, ' C')}), "
        f"power {shown(g.power_w, ' W')}/{shown(g.power_limit_w, ' W')}, "
        f"sm {shown(g.sm_clock_mhz, ' MHz')}, mem clock {shown(g.memory_clock_mhz, ' MHz')}, "
        f"{shown(g.pstate)}, clock events: {events}, "
        f"ecc volatile uncorrected {shown(g.ecc_uncorrected)}"
    )


def main(method: str) -> int:
    if method == "nvml":
        reply = subprocess.run(
            [sys.executable, "-c", NVML_SCRIPT], capture_output=True, text=True, timeout=60
        )
        try:
            readings = parse_nvml_json("local", reply.stdout).gpus
        except (NvmlUnavailable, GpuQueryError) as exc:
            print(exc)
            return 1
    elif method == "smi":
        reply = subprocess.run(query_command(), shell=True, capture_output=True, text=True)
        if reply.returncode != 0:
            print(f"nvidia-smi exited {reply.returncode}: {reply.stderr.strip()}")
            return 1
        readings = tuple(parse_query_csv("local", reply.stdout))
    else:
        print("usage: python -m bench.gpu_probe nvml|smi", file=sys.stderr)
        return 2
    for reading in readings:
        print(_row(reading))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
