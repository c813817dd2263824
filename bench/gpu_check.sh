#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (the device tool lends one to some sessions): the console's
# NVML collector and its nvidia-smi parser, each beside nvidia-smi's own reading, idle and
# under a matmul load. Needs python3 and nvidia-smi there; nvidia-ml-py comes from
# .device/wheels (pip download nvidia-ml-py --no-deps -d .device/wheels, carried there).
#   bash bench/gpu_check.sh          # prints the three readings, idle then loaded
set -u
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi here: not a GPU machine"; exit 2; }
PYTHON=${PYTHON:-python3}
# A pure-Python wheel imports straight from its zip.
WHEELS=$(ls .device/wheels/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH=".:${WHEELS}${PYTHONPATH:-}"

readings() {
    echo "== $1: nvidia-smi's own reading"
    nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,temperature.memory,power.draw,power.limit,clocks.sm,clocks.mem,pstate,clocks_event_reasons.active,ecc.errors.uncorrected.volatile.total --format=csv
    echo "== $1: the console's NVML collector"
    "$PYTHON" -m bench.gpu_probe nvml
    echo "== $1: the console's nvidia-smi parser"
    "$PYTHON" -m bench.gpu_probe smi
}

readings idle
# The load: bf16 matmuls for 40 s (torch if the machine has it; else none, said so).
if "$PYTHON" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    "$PYTHON" - <<'PY' &
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
end = time.monotonic() + 40
while time.monotonic() < end:
    (a @ a).sum().item()
PY
    load=$!
    sleep 15  # let util, power and clocks settle under the load
    readings "under a matmul load"
    kill "$load" 2>/dev/null
    wait "$load" 2>/dev/null
else
    echo "== no torch with CUDA here: no load reading (only idle)"
fi
