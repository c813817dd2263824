"""``vllm.service`` on one simulated node: what systemd and the journal would say about it.

A (re)start takes ``boot_s`` (the engine is "activating" and /health answers 503), then reads
the engine-argument file and starts an :class:`EngineSim`. A file vLLM would reject leaves
the unit failing and retrying every ``boot_s``, as ``Restart=on-failure`` does, until the file
is fixed. A start that succeeds logs vLLM's own ``non-default args: {...}`` line, which is how
an engineer (or a runbook) learns what the engine really runs with. Runs on the fleet's event
loop; it never listens on a socket.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from console.demo.engine_args import EngineArgsError, parse_engine_file
from console.demo.engine_sim import EngineSim, EngineStartError
from console.demo.faults import ActiveFaults
from console.demo.journal import Journal

UNIT = "vllm.service"
VLLM_VERSION = "0.33.0"
# Where vLLM's log lines say they come from. log_non_default_args lives in
# vllm/entrypoints/utils.py; the line numbers are those of a 0.11 log (0.33's are not known).
_VERSION_AT = "api_server.py:1839"
_ARGS_AT = "utils.py:233"
_SERVING_AT = "launcher.py:37"


class EngineService:
    """The unit's state, its journal, and the running :class:`EngineSim` (None unless active)."""

    def __init__(self, node: str, args_path: Path, faults: ActiveFaults, boot_s: float) -> None:
        self.node = node
        self.args_path = args_path
        self.faults = faults
        self.boot_s = boot_s
        self.engine: EngineSim | None = None
        self.state = "inactive"  # systemd's ActiveState: active | activating | inactive
        self.since = time.time()  # when the unit entered its state
        self.failed_starts = 0  # since the last (re)start: the unit is in auto-restart
        self.journal = Journal(node)
        self.pid = 4000  # vLLM's main PID (the latest one tried while it fails)
        self._boot: asyncio.Task | None = None

    def start_now(self) -> None:
        """Start without the boot delay (the fleet coming up); falls back to retrying."""
        self._cancel_boot()
        self._log("systemd", f"Started {UNIT} - vLLM OpenAI-compatible server.")
        self.failed_starts = 0
        if not self._try_start():
            self._boot = asyncio.get_running_loop().create_task(self._boot_loop(failures=1))

    def restart(self) -> None:
        self.stop()
        self._log("systemd", f"Started {UNIT} - vLLM OpenAI-compatible server.")
        self._set_state("activating")
        self.failed_starts = 0
        self._boot = asyncio.get_running_loop().create_task(self._boot_loop(failures=0))

    def stop(self) -> None:
        self._cancel_boot()
        if self.state != "inactive":
            self._log("systemd", f"Stopping {UNIT} - vLLM OpenAI-compatible server...")
            self._log("systemd", f"Stopped {UNIT} - vLLM OpenAI-compatible server.")
        self.engine = None
        self._set_state("inactive")

    async def _boot_loop(self, failures: int) -> None:
        """Boot after ``boot_s``; after a failed start, retry as ``Restart=on-failure`` does."""
        while True:
            await asyncio.sleep(self.boot_s)
            if failures:
                self._log(
                    "systemd", f"{UNIT}: Scheduled restart job, restart counter is at {failures}."
                )
            if self._try_start():
                return
            failures += 1

    def _try_start(self) -> bool:
        self.pid += 1
        self._log("vllm", self._info(_VERSION_AT, f"vLLM API server version {VLLM_VERSION}"))
        try:
            args, settings = parse_engine_file(self.args_path.read_text())
            # As vLLM does: the arguments are logged once parsed, before the engine starts.
            self._log("vllm", self._info(_ARGS_AT, f"non-default args: {settings!r}"))
            self.engine = EngineSim(args, self.faults)
        except (OSError, EngineArgsError, EngineStartError) as exc:
            self._log("vllm", f"ERROR {exc}")
            self._log("systemd", f"{UNIT}: Main process exited, code=exited, status=1/FAILURE")
            self._log("systemd", f"{UNIT}: Failed with result 'exit-code'.")
            self.failed_starts += 1
            self._set_state("activating")
            return False
        serving = "Starting vLLM API server 0 on http://0.0.0.0:8000"
        self._log("vllm", self._info(_SERVING_AT, serving))
        self._set_state("active")
        return True

    def _cancel_boot(self) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def _info(self, where: str, message: str) -> str:
        """vLLM's logger format: ``(APIServer pid=N) INFO MM-DD HH:MM:SS [file:line] message``."""
        stamp = time.strftime("%m-%d %H:%M:%S")
        return f"(APIServer pid={self.pid}) INFO {stamp} [{where}] {message}"

    def _log(self, source: str, message: str) -> None:
        self.journal.log(f"vllm[{self.pid}]" if source == "vllm" else "systemd[1]", message)
