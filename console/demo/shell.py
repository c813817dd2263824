"""The commands a simulated node answers over SSH ``exec``, and what they print.

Accepted (an optional leading ``sudo`` is ignored):

* ``nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits] [-i IDS]``
* ``systemctl restart|start|stop|is-active vllm.service`` (``vllm`` works too)
* ``journalctl -u vllm.service [-n N] [--no-pager]``
* any of these behind coreutils' ``timeout [-k D] D`` (simulated commands never hang)

Anything else gets bash's ``command not found`` and exit status 127. It runs no real process.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from console.demo.engine_service import UNIT, EngineService
from console.demo.gpu_sim import GpuSim
from console.demo.nvidia_smi import NvidiaSmiError, query_gpus

_UNIT_NOT_FOUND = 5  # systemctl's exit status for an unknown unit
_NOT_ACTIVE = 3  # systemctl is-active: the unit is not active


@dataclass(frozen=True)
class CommandResult:
    stdout: str = ""
    stderr: str = ""
    exit_status: int = 0


class NodeShell:
    def __init__(self, service: EngineService, gpus: GpuSim) -> None:
        self._service = service
        self._gpus = gpus

    def run(self, command: str) -> CommandResult:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return CommandResult(stderr=f"bash: -c: line 1: {exc}\n", exit_status=2)
        if argv[:1] == ["sudo"]:
            argv = [a for a in argv[1:] if a != "-n"]  # -n: never prompt; there is no password
        argv = _without_timeout(argv)
        if not argv:
            return CommandResult()
        program, args = argv[0].rsplit("/", 1)[-1], argv[1:]
        if program == "nvidia-smi":
            return self._nvidia_smi(args)
        if program == "systemctl":
            return self._systemctl(args)
        if program == "journalctl":
            return self._journalctl(args)
        return CommandResult(stderr=f"bash: {argv[0]}: command not found\n", exit_status=127)

    def _nvidia_smi(self, args: Sequence[str]) -> CommandResult:
        try:
            return CommandResult(stdout=query_gpus(args, self._gpus.gpus))
        except NvidiaSmiError as exc:
            return CommandResult(stderr=f"{exc}\n\n", exit_status=exc.exit_status)

    def _systemctl(self, args: Sequence[str]) -> CommandResult:
        verbs = [a for a in args if not a.startswith("-")]
        if len(verbs) != 2 or verbs[0] not in ("restart", "start", "stop", "is-active"):
            return CommandResult(
                stderr="systemctl: unsupported command in this demo\n", exit_status=1
            )
        verb, unit = verbs
        if unit not in (UNIT, UNIT.removesuffix(".service")):
            if verb == "is-active":
                return CommandResult(stdout="inactive\n", exit_status=_NOT_ACTIVE)
            return CommandResult(
                stderr=f"Failed to {verb} {unit}: Unit {unit} not found.\n",
                exit_status=_UNIT_NOT_FOUND,
            )
        service = self._service
        if verb == "is-active":
            state = service.state
            status = 0 if state == "active" else _NOT_ACTIVE
            return CommandResult(stdout=f"{state}\n", exit_status=status)
        if verb == "stop":
            service.stop()
        elif verb == "restart" or service.state == "inactive":
            service.restart()
        return CommandResult()

    def _journalctl(self, args: Sequence[str]) -> CommandResult:
        lines = list(self._service.journal)
        if "-n" in args:
            index = args.index("-n") + 1
            count = args[index] if index < len(args) else ""
            if not count.isdigit():
                return CommandResult(stderr=f"Failed to parse lines '{count}'.\n", exit_status=1)
            lines = lines[-int(count) :] if int(count) else []
        return CommandResult(stdout="".join(line + "\n" for line in lines))


def _without_timeout(argv: list[str]) -> list[str]:
    """``timeout -k 5 20 CMD...`` -> ``CMD...``."""
    if argv[:1] != ["timeout"]:
        return argv
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-k", "-s") else rest[1:]
    return rest[1:]  # drop the duration
