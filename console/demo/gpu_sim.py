"""The GPUs of one simulated node: H100 readings that follow the node's engine.

Every reading moves between the captured H100's idle and full-load points (:mod:`h100`) with
utilisation, which follows the engine's busy time and batch size. Memory used is the engine's
fixed share plus its KV-cache pool's occupancy (a real vLLM reserves the pool up front; showing
its fill makes cache pressure visible on the GPU panel). This module computes readings;
printing them is :mod:`nvidia_smi`'s job.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass

from console.demo import h100
from console.demo.engine_sim import EngineSim

_THERMAL_TIME_CONSTANT_S = 20.0
# PCI bus ids of the eight SXM slots of an HGX H100 board.
_BUS_IDS = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")
REASON_GPU_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4


@dataclass
class GpuState:
    index: int
    uuid: str
    pci_bus_id: str
    name: str = h100.NAME
    driver_version: str = h100.DRIVER_VERSION
    memory_total_mib: int = h100.MEMORY_TOTAL_MIB
    memory_used_mib: int = 0
    util_pct: int = 0
    memory_util_pct: int = 0
    temperature_c: float = h100.IDLE_TEMP_C
    power_w: float = h100.IDLE_POWER_W
    power_limit_w: float = h100.POWER_LIMIT_W
    sm_clock_mhz: int = h100.IDLE_SM_MHZ
    memory_clock_mhz: int = h100.MEMORY_CLOCK_MHZ
    max_sm_clock_mhz: int = h100.MAX_SM_MHZ
    pstate: str = h100.PSTATE
    compute_mode: str = h100.COMPUTE_MODE
    mig_mode: str = h100.MIG_MODE
    event_reasons: int = REASON_GPU_IDLE
    energy_mj: float = 0.0  # since the simulation started, as DCGM counts it since boot

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_total_mib - h100.RESERVED_MIB - self.memory_used_mib)


def gpu_uuid(seed: int, node: str, index: int) -> str:
    """``GPU-xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx``: the fixture's shape, unique per GPU."""
    digest = hashlib.sha256(f"{seed}:{node}:{index}".encode()).digest()
    return f"GPU-{uuid.UUID(bytes=digest[:16], version=4)}"


class GpuSim:
    def __init__(self, node: str, count: int, seed: int, rng: random.Random | None) -> None:
        self._rng = rng  # None: deterministic, readings change only with the engine
        self.gpus = [
            GpuState(i, gpu_uuid(seed, node, i), f"00000000:{_BUS_IDS[i % 8]}:00.0")
            for i in range(count)
        ]
        # Fixed per-GPU differences, so eight GPUs never print identical rows.
        offsets = random.Random(f"{seed}:{node}:gpus")
        self._temp_offset = [offsets.uniform(-2.5, 2.5) for _ in range(count)]
        self._power_factor = [offsets.uniform(0.97, 1.03) for _ in range(count)]
        for gpu, offset in zip(self.gpus, self._temp_offset, strict=True):
            gpu.temperature_c = h100.IDLE_TEMP_C + offset

    def update(self, dt_s: float, engine: EngineSim | None) -> None:
        """Move every reading ``dt_s`` seconds on, given the engine now (None: not running)."""
        for gpu in self.gpus:
            if engine is not None and gpu.index < engine.args.tensor_parallel_size:
                batch_fill = min(1.0, engine.tokens_per_step / 256)
                util = engine.busy_fraction * (30 + 70 * batch_fill)
                # vLLM allocates its whole KV pool at start-up, so nvidia-smi shows it all as
                # used however full the cache is (gpu-memory-utilization of the card).
                used = engine.static_mib_per_gpu + engine.kv_pool_mib_per_gpu
            else:
                util = used = 0.0
            if self._rng is not None and util > 0:
                util += self._rng.uniform(-2.0, 2.0)
            self._apply(gpu, dt_s, max(0.0, min(100.0, util)), used)

    def _apply(self, gpu: GpuState, dt_s: float, util: float, used_mib: float) -> None:
        load = util / 100  # 0 at the captured idle point, 1 at the captured full-load point
        gpu.util_pct = round(util)
        # LLM decode leans on memory harder than the captured matmul (34% at full load).
        gpu.memory_util_pct = round(util * 0.6)
        gpu.memory_used_mib = round(used_mib)
        target = h100.IDLE_TEMP_C + (h100.LOAD_TEMP_C - h100.IDLE_TEMP_C) * load
        target += self._temp_offset[gpu.index]
        approach = min(1.0, dt_s / _THERMAL_TIME_CONSTANT_S)
        gpu.temperature_c += (target - gpu.temperature_c) * approach
        dynamic = (h100.LOAD_POWER_W - h100.IDLE_POWER_W) * load * self._power_factor[gpu.index]
        power = h100.IDLE_POWER_W + dynamic
        capped = power >= 0.985 * gpu.power_limit_w
        gpu.power_w = min(power, 0.997 * gpu.power_limit_w)
        gpu.energy_mj += gpu.power_w * dt_s * 1000
        if gpu.util_pct == 0:
            gpu.sm_clock_mhz, gpu.event_reasons = h100.IDLE_SM_MHZ, REASON_GPU_IDLE
        else:
            gpu.sm_clock_mhz = round(h100.MAX_SM_MHZ - (h100.MAX_SM_MHZ - h100.LOAD_SM_MHZ) * load)
            gpu.event_reasons = REASON_SW_POWER_CAP if capped else 0
