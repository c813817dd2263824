"""The commands a simulated host answers over SSH ``exec``, and what they print.

:class:`Shell` holds what every demo host answers (``hostname``, ``uptime``, ``cat``,
``journalctl`` of its unit, the one-command rule); :class:`NodeShell` is a GPU node's. A GPU
node accepts (a leading ``sudo`` is ignored, and so is coreutils' ``timeout [-k D] D``, in
either order: simulated commands never hang):

* ``nvidia-smi`` bare (the table), ``-L``, ``-q``, ``--query-gpu=...`` and
  ``--query-compute-apps=...`` with ``--format=csv[,noheader][,nounits]`` and ``-i IDS``
* ``systemctl restart|start|stop|is-active|status vllm.service`` (``vllm`` works too)
* ``journalctl -u vllm.service [-n N] [--since WHEN] [-f] [--no-pager]``; ``-f`` follows the
  journal until the channel closes
* ``uptime``, ``free [-k|-m|-g|-h]``, ``df [-h]``, ``hostname``, ``cat FILE`` (the node's files,
  the ones SFTP serves, such as /etc/vllm/args.yaml)

One command per exec: pipes, lists, redirections and substitutions get an error that says so.
Anything else gets bash's ``command not found`` and exit status 127. It runs no real process.
Formats not captured in ../shared/fixtures are shaped after each tool's documentation, as the
functions below say.
"""

from __future__ import annotations

import asyncio
import getopt
import re
import shlex
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from backends.gpu import NVML_SCRIPT
from console.demo.engine_args import ARGS_FILE
from console.demo.engine_service import UNIT, EngineService
from console.demo.gpu_sim import GpuSim
from console.demo.journal import Journal, JournalEntry
from console.demo.nvidia_smi import ComputeApp, NvidiaSmiError, nvidia_smi
from console.demo.nvml_sim import SimNvml, SimProcess, run_script

UNIT_NOT_FOUND = 5  # systemctl's exit status for an unknown unit (start, stop, restart)
NOT_ACTIVE = 3  # systemctl is-active / status: the unit is not active
NO_SUCH_UNIT = 4  # systemctl status: no such unit
_SYNTAX = 2  # bash's exit status for a syntax error
_FOLLOW_POLL_S = 0.2
_JOURNAL_TAIL = 10  # what `journalctl -f` and `systemctl status` show of the past
_DESCRIPTION = "vLLM OpenAI-compatible server"
_EXEC = f"/usr/bin/python3 -m vllm.entrypoints.openai.api_server --config {ARGS_FILE}"
# Shell operators and substitutions: the demo runs no shell, so it refuses them.
_OPERATORS = re.compile(r"[|;&<>]")
_SUBSTITUTIONS = re.compile(r"`|\$\(")
_ONE_COMMAND = (
    "the demo node runs single commands: pipes (|), lists (; && ||), redirections (< >) "
    "and substitutions ($(...) `...`) are not supported; run one command at a time\n"
)
# A p5.48xlarge: 2 TiB of host memory (KiB), root and local NVMe volumes (1K blocks).
_MEM_TOTAL_KIB = 2_113_626_112
_MEM_BASE_USED_KIB = 9_437_184
_FILESYSTEMS = (
    ("/dev/root", 507_930_632, 73_614_516, "/"),
    ("tmpfs", 1_056_813_056, 0, "/dev/shm"),
    ("/dev/md0", 29_996_929_024, 1_463_185_408, "/opt/dlami/nvme"),
)


@dataclass(frozen=True)
class CommandResult:
    stdout: str = ""
    stderr: str = ""
    exit_status: int = 0
    # More output, line by line, until the client closes the channel (``journalctl -f``).
    follow: Callable[[], AsyncIterator[str]] | None = None


Program = Callable[[Sequence[str]], CommandResult]


class Shell:
    """What every demo host answers; a subclass adds its programs and runs one unit."""

    def __init__(self, name: str, root: Path, unit: str, journal: Journal) -> None:
        self._name = name
        self._root = root
        self._unit = unit
        self._journal = journal
        self.booted_at = time.time()  # the host sets it when it comes (back) up

    def run(self, command: str) -> CommandResult:
        if _has_shell_syntax(command):
            return CommandResult(stderr=_ONE_COMMAND, exit_status=_SYNTAX)
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return CommandResult(stderr=f"bash: -c: line 1: {exc}\n", exit_status=_SYNTAX)
        while argv[:1] in (["sudo"], ["timeout"]):  # in either order: `timeout 20 sudo ...`
            argv = _without_sudo(argv) if argv[0] == "sudo" else _without_timeout(argv)
        if not argv:
            return CommandResult()
        program, args = argv[0].rsplit("/", 1)[-1], argv[1:]
        handler = self._programs().get(program)
        if handler is None:
            return CommandResult(stderr=f"bash: {argv[0]}: command not found\n", exit_status=127)
        return handler(args)

    def _programs(self) -> dict[str, Program]:
        return {
            "journalctl": self._journalctl,
            "uptime": self._uptime,
            "hostname": self._hostname,
            "cat": self._cat,
        }

    def _load(self) -> float:
        """The load average ``uptime`` shows."""
        return 0.0

    # -- systemctl: the verbs a host's unit takes, each host's unit says what they do

    systemctl_verbs: tuple[str, ...] = ("is-active", "status")

    def _systemctl(self, args: Sequence[str]) -> CommandResult:
        verbs = [a for a in args if not a.startswith("-")]
        if len(verbs) != 2 or verbs[0] not in self.systemctl_verbs:
            return CommandResult(
                stderr="systemctl: unsupported command in this demo\n", exit_status=1
            )
        verb, unit = verbs
        if not self.is_unit(unit):
            return unknown_unit(verb, unit)
        if verb == "status":
            return self._status()
        if verb == "is-active":
            state = self._unit_state()
            status = 0 if state == "active" else NOT_ACTIVE
            return CommandResult(stdout=f"{state}\n", exit_status=status)
        return self._unit_verb(verb)

    def _unit_state(self) -> str:
        raise NotImplementedError

    def _status(self) -> CommandResult:
        raise NotImplementedError

    def _unit_verb(self, verb: str) -> CommandResult:
        """``systemctl VERB UNIT`` for a verb other than status and is-active."""
        raise NotImplementedError

    def is_unit(self, unit: str) -> bool:
        return unit in (self._unit, self._unit.removesuffix(".service"))

    def unit_status(
        self, symbol: str, active: str, since: float, running: str | None, description: str
    ) -> str:
        """``systemctl status``, shaped after systemctl(1)'s documented example (no capture).

        ``running``: the main process's command line, when one is running.
        """
        when = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(since))
        ago = _timespan(time.time() - since)
        unit = self._unit
        lines = [
            f"{symbol} {unit} - {description}",
            f"     Loaded: loaded (/etc/systemd/system/{unit}; enabled; preset: enabled)",
            f"     Active: {active} since {when}; {ago} ago",
        ]
        if running is not None:
            pid, _, command = running.partition(" ")
            lines += [
                f"   Main PID: {pid} ({command.split()[0].rsplit('/', 1)[-1]})",
                f"     CGroup: /system.slice/{unit}",
                f"             └─{running}",
            ]
        journal = [e.line for e in list(self._journal.entries)[-_JOURNAL_TAIL:]]
        if journal:
            lines += ["", *journal]
        return "".join(line + "\n" for line in lines)

    def _journalctl(self, args: Sequence[str]) -> CommandResult:
        """journalctl's default output (the lines the host's unit logs), see journalctl(1)."""
        try:
            options, extra = getopt.gnu_getopt(
                list(args),
                "u:n:S:fqbx",
                ["unit=", "lines=", "since=", "follow", "no-pager", "quiet", "boot"],
            )
        except getopt.GetoptError as exc:
            return CommandResult(stderr=f"journalctl: {exc}\n", exit_status=1)
        if extra:
            return CommandResult(
                stderr="journalctl: matches are not supported in this demo: use -u UNIT\n",
                exit_status=1,
            )
        units: list[str] = []
        count: int | None = None
        since: float | None = None
        follow = False
        for name, value in options:
            if name in ("-u", "--unit"):
                units.append(value)
            elif name in ("-n", "--lines"):
                if not value.isdigit():
                    return CommandResult(
                        stderr=f"Failed to parse lines '{value}'.\n", exit_status=1
                    )
                count = int(value)
            elif name in ("-S", "--since"):
                since = _parse_since(value, time.time())
                if since is None:
                    return CommandResult(
                        stderr=f"Failed to parse timestamp: {value}\n", exit_status=1
                    )
            elif name in ("-f", "--follow"):
                follow = True
        ours = not units or any(self.is_unit(u) for u in units)
        entries = [e for e in self._journal.entries if since is None or e.at >= since]
        entries = entries if ours else []
        if count is None and follow:
            count = _JOURNAL_TAIL
        if count is not None:
            entries = entries[-count:] if count else []
        stdout = "".join(e.line + "\n" for e in entries)
        if not follow:
            return CommandResult(stdout=stdout or "-- No entries --\n")
        return CommandResult(stdout=stdout, follow=lambda: self._follow(ours))

    async def _follow(self, ours: bool) -> AsyncIterator[str]:
        journal = self._journal
        seen = journal.total
        while True:
            await asyncio.sleep(_FOLLOW_POLL_S)
            new = journal.total - seen
            seen = journal.total
            if ours and new:
                entries: list[JournalEntry] = list(journal.entries)[-new:]
                for entry in entries:
                    yield entry.line + "\n"

    def _uptime(self, args: Sequence[str]) -> CommandResult:
        """procps' ``uptime`` line (format from its manual; there is no capture)."""
        if args:
            return CommandResult(stderr=f"uptime: invalid option -- '{args[0]}'\n", exit_status=1)
        now = time.time()
        up = _uptime_span(now - self.booted_at)
        load = self._load()
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        line = f" {clock} up {up},  1 user,  load average: {load:.2f}, {load:.2f}, {load:.2f}\n"
        return CommandResult(stdout=line)

    def _hostname(self, args: Sequence[str]) -> CommandResult:
        if any(a not in ("-s", "--short", "-f", "--fqdn") for a in args):
            return CommandResult(
                stderr="hostname: the demo host only prints its name\n", exit_status=1
            )
        return CommandResult(stdout=f"{self._name}\n")

    def _cat(self, args: Sequence[str]) -> CommandResult:
        """Files of the host's root: the same tree SFTP serves."""
        out, errors = [], []
        root = self._root.resolve()
        for name in args:
            path = (root / name.lstrip("/")).resolve()
            if not path.is_relative_to(root) or not path.exists():
                errors.append(f"cat: {name}: No such file or directory\n")
            elif path.is_dir():
                errors.append(f"cat: {name}: Is a directory\n")
            else:
                out.append(path.read_text(errors="replace"))
        return CommandResult("".join(out), "".join(errors), 1 if errors else 0)


def unknown_unit(verb: str, unit: str) -> CommandResult:
    """What systemctl answers for a unit the host does not have."""
    name = unit if "." in unit else f"{unit}.service"
    if verb == "is-active":
        return CommandResult(stdout="inactive\n", exit_status=NOT_ACTIVE)
    if verb == "status":
        return CommandResult(stderr=f"Unit {name} could not be found.\n", exit_status=NO_SUCH_UNIT)
    return CommandResult(
        stderr=f"Failed to {verb} {unit}: Unit {name} not found.\n", exit_status=UNIT_NOT_FOUND
    )


class NodeShell(Shell):
    """A GPU node: nvidia-smi, ``vllm.service``, and what an engineer types first."""

    def __init__(
        self, name: str, root: Path, service: EngineService, gpus: GpuSim, *, nvml: bool = False
    ) -> None:
        super().__init__(name, root, UNIT, service.journal)
        self._service = service
        self._gpus = gpus
        self._nvml = nvml  # python3 with nvidia-ml-py: the console's NVML script runs here

    def _programs(self) -> dict[str, Program]:
        programs = {
            **super()._programs(),
            "nvidia-smi": self._nvidia_smi,
            "systemctl": self._systemctl,
            "free": self._free,
            "df": self._df,
        }
        if self._nvml:
            programs["python3"] = self._python3
        return programs

    def _python3(self, args: Sequence[str]) -> CommandResult:
        """Only the console's NVML snapshot script: a demo node runs no other code."""
        if list(args) != ["-c", NVML_SCRIPT]:
            return CommandResult(
                stderr="python3: this demo node runs only the console's NVML snapshot script\n",
                exit_status=2,
            )
        processes = [
            SimProcess(app.pid, app.name, "vllm", app.gpu.index, app.used_mib)
            for app in self._apps()
        ]
        stdout, status = run_script(NVML_SCRIPT, SimNvml(self._gpus.gpus, processes))
        return CommandResult(stdout=stdout, exit_status=status)

    def _load(self) -> float:
        engine = self._service.engine
        return engine.busy_fraction * engine.args.tensor_parallel_size if engine else 0.0

    # -- nvidia-smi -----------------------------------------------------------------------------

    def _nvidia_smi(self, args: Sequence[str]) -> CommandResult:
        try:
            return CommandResult(stdout=nvidia_smi(args, self._gpus.gpus, self._apps()))
        except NvidiaSmiError as exc:
            # nvidia-smi prints its refusals on stdout, exit status 2, as the real one does.
            return CommandResult(stdout=f"{exc}\n\n", exit_status=exc.exit_status)

    def _apps(self) -> list[ComputeApp]:
        """vLLM's tensor-parallel workers, one process per GPU it uses."""
        engine = self._service.engine
        if engine is None:
            return []
        base = self._service.pid + 2  # after the API server and the engine core
        return [
            ComputeApp(base + gpu.index, "python3", gpu, gpu.memory_used_mib)
            for gpu in self._gpus.gpus
            if gpu.index < engine.args.tensor_parallel_size
        ]

    # -- systemd --------------------------------------------------------------------------------

    systemctl_verbs = ("restart", "start", "stop", "is-active", "status")

    def _unit_state(self) -> str:
        return self._service.state

    def _unit_verb(self, verb: str) -> CommandResult:
        service = self._service
        if verb == "stop":
            service.stop()
        elif verb == "restart" or service.state == "inactive":
            service.restart()
        return CommandResult()

    def _status(self) -> CommandResult:
        service = self._service
        state = {
            "active": "active (running)",
            "activating": "activating (auto-restart) (Result: exit-code)"
            if service.failed_starts
            else "activating (start)",
            "inactive": "inactive (dead)",
        }[service.state]
        running = service.state != "inactive" and not service.failed_starts
        text = self.unit_status(
            "○" if service.state == "inactive" else "●",
            state,
            service.since,
            f"{service.pid} {_EXEC}" if running else None,
            _DESCRIPTION,
        )
        return CommandResult(
            stdout=text, exit_status=0 if service.state == "active" else NOT_ACTIVE
        )

    # -- the rest of what an engineer types first -----------------------------------------------

    def _free(self, args: Sequence[str]) -> CommandResult:
        """procps-ng 4's ``free`` table (its documented layout; there is no capture)."""
        units = {"-k": 1, "-m": 1 << 10, "-g": 1 << 20, "-h": 0}
        scale = 1
        for arg in args:
            if arg not in units:
                return CommandResult(stderr=f"free: invalid option -- '{arg}'\n", exit_status=1)
            scale = units[arg]
        engine = self._service.engine
        # The engine process holds a few GiB of host memory per worker, beside the OS.
        workers = engine.args.tensor_parallel_size if engine else 0
        used = _MEM_BASE_USED_KIB + workers * 6_291_456
        cache = 96_468_992
        free = _MEM_TOTAL_KIB - used - cache
        rows = [
            ("Mem:", (_MEM_TOTAL_KIB, used, free, 52_224, cache, _MEM_TOTAL_KIB - used)),
            ("Swap:", (0, 0, 0)),
        ]
        header = ("total", "used", "free", "shared", "buff/cache", "available")
        lines = [" " * 8 + "".join(f"{h:>12}" for h in header)]
        for label, values in rows:
            cells = [_human_kib(v, "i") if scale == 0 else str(v // scale) for v in values]
            lines.append(f"{label:<8}" + "".join(f"{c:>12}" for c in cells))
        return CommandResult(stdout="".join(line + "\n" for line in lines))

    def _df(self, args: Sequence[str]) -> CommandResult:
        """coreutils' ``df`` (its documented columns; widths fit the values, as df does)."""
        human = False
        for arg in args:
            if arg != "-h":
                return CommandResult(stderr=f"df: invalid option -- '{arg}'\n", exit_status=1)
            human = True
        header = ["Filesystem", "Size" if human else "1K-blocks", "Used", "Avail", "Use%"]
        if not human:
            header[3] = "Available"
        rows = [[*header, "Mounted on"]]
        for device, size, used, mount in _FILESYSTEMS:
            available = size - used
            percent = f"{-(-used * 100 // size)}%" if used else "0%"
            sizes = [_human_kib(v) if human else str(v) for v in (size, used, available)]
            rows.append([device, *sizes, percent, mount])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for row in rows:
            cells = [row[0].ljust(widths[0])]
            cells += [row[i].rjust(widths[i]) for i in range(1, len(header))]
            lines.append(" ".join([*cells, row[-1]]))
        return CommandResult(stdout="".join(line + "\n" for line in lines))


def _has_shell_syntax(command: str) -> bool:
    """Operators outside quotes, or substitutions outside single quotes (as bash reads them)."""
    outside_single = re.sub(r"'[^']*'", "", command)
    if _SUBSTITUTIONS.search(outside_single):
        return True
    return bool(_OPERATORS.search(re.sub(r'"(?:[^"\\]|\\.)*"', "", outside_single)))


def _parse_since(text: str, now: float) -> float | None:
    """The forms of systemd.time(7) an engineer types: absolute, ``today``, ``-5min``, ``ago``."""
    text = text.strip()
    today = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    named = {"now": datetime.fromtimestamp(now), "today": today}
    named["yesterday"] = today - timedelta(days=1)
    named["tomorrow"] = today + timedelta(days=1)
    if text in named:
        return named[text].timestamp()
    relative = re.fullmatch(r"-\s*(\d+)\s*([a-z]+)|(\d+)\s*([a-z]+) ago", text)
    if relative:
        amount = int(relative[1] or relative[3])
        unit = relative[2] or relative[4]
        seconds = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60}
        seconds |= {"minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}
        seconds |= {"d": 86400, "day": 86400, "days": 86400}
        return now - amount * seconds[unit] if unit in seconds else None
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).timestamp()
        except ValueError:
            pass
    for pattern in ("%H:%M:%S", "%H:%M"):
        try:
            clock = datetime.strptime(text, pattern)
        except ValueError:
            continue
        return today.replace(hour=clock.hour, minute=clock.minute, second=clock.second).timestamp()
    return None


def _timespan(seconds: float) -> str:
    """systemd's ``5min 3s`` style, to the two largest units."""
    total = int(seconds)
    parts = []
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount} {unit}s" if unit == "day" and amount > 1 else f"{amount}{unit}")
    return " ".join(parts[:2]) or "0s"


def _uptime_span(seconds: float) -> str:
    """procps: ``5 min``, ``3:04``, ``12 days,  3:04``."""
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours:2d}:{minutes:02d}" if hours else f"{minutes} min"
    if days:
        return f"{days} day{'s' if days > 1 else ''}, {clock}"
    return clock.strip()


def _human_kib(kib: int, suffix: str = "") -> str:
    """``-h`` sizes: powers of 1024, one decimal below 10 (free adds an ``i``: ``31Gi``)."""
    value, units = float(kib), ["K", "M", "G", "T", "P"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    unit = units[0]
    if not value:
        return "0"
    return f"{value:.1f}{unit}{suffix}" if value < 10 else f"{round(value)}{unit}{suffix}"


def _without_sudo(argv: list[str]) -> list[str]:
    """``sudo -n -u root CMD...`` -> ``CMD...`` (there is no password to ask for)."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-u", "-g") else rest[1:]
    return rest


def _without_timeout(argv: list[str]) -> list[str]:
    """``timeout -k 5 20 CMD...`` -> ``CMD...``."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("-k", "-s") else rest[1:]
    return rest[1:]  # drop the duration
