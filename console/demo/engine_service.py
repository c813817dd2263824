"""``vllm.service`` on one simulated node: what systemd and the journal would say about it.

A (re)start takes ``boot_s`` (the engine is "activating" and /health answers 503), then reads
the engine-argument file and starts an :class:`EngineSim`. A file vLLM would reject leaves
the unit failing and retrying every ``boot_s``, as ``Restart=on-failure`` does, until the file
is fixed. Runs on the fleet's event loop; it never listens on a socket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from console.demo.engine_args import EngineArgsError, parse_engine_args
from console.demo.engine_sim import EngineSim, EngineStartError
from console.demo.faults import ActiveFaults

UNIT = "vllm.service"
VLLM_VERSION = "0.33.0"
_JOURNAL_LINES = 200


@dataclass(frozen=True)
class JournalEntry:
    at: float  # wall-clock seconds, as journald stamps an entry
    line: str  # journalctl's default ("short") output line


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
        self.journal: deque[JournalEntry] = deque(maxlen=_JOURNAL_LINES)
        self.journal_total = 0  # entries ever logged: a follower knows what is new
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
        self._log("vllm", f"INFO vLLM API server version {VLLM_VERSION}")
        try:
            args = parse_engine_args(self.args_path.read_text())
            self.engine = EngineSim(args, self.faults)
        except (OSError, EngineArgsError, EngineStartError) as exc:
            self._log("vllm", f"ERROR {exc}")
            self._log("systemd", f"{UNIT}: Main process exited, code=exited, status=1/FAILURE")
            self._log("systemd", f"{UNIT}: Failed with result 'exit-code'.")
            self.failed_starts += 1
            self._set_state("activating")
            return False
        self._log(
            "vllm",
            f"INFO Starting vLLM API server on http://0.0.0.0:8000 (model {args.model}, "
            f"revision {args.revision}, max_num_batched_tokens {args.max_num_batched_tokens})",
        )
        self._set_state("active")
        return True

    def _cancel_boot(self) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def _log(self, source: str, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
        who = f"vllm[{self.pid}]" if source == "vllm" else "systemd[1]"
        self.journal.append(JournalEntry(now, f"{stamp} {self.node} {who}: {message}"))
        self.journal_total += 1
