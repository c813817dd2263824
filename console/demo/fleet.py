"""The demo fleet: nodes, backup provider, traffic and faults on one background event loop.

Everything runs in one thread with its own asyncio loop, so the simulation never competes
with the caller's loop (a Textual app, a test) and needs no locks: calls from other threads
(:meth:`DemoFleet.inject`, :meth:`DemoFleet.heal`, :meth:`DemoFleet.stop`) are handed to the
loop. The fleet writes a config.yaml that the console reads like any other; it must not import
anything from the console's UI.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import logging
import os
import random
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from console.demo.completions import id_sequence
from console.demo.config_file import (
    BACKUP_KEY_ENV,
    EndpointEntry,
    NodeEntry,
    write_config,
)
from console.demo.engine_args import EngineArgs, parse_engine_args, render_engine_args
from console.demo.faults import (
    BACKUP_PROVIDER,
    FAULTS,
    RETRY_AFTER_S,
    SLOWDOWN,
    ActiveFaults,
    FaultSpec,
    fault_targets,
    resolve_target,
)
from console.demo.http_server import HOST, HttpServer
from console.demo.keys import ensure_key, write_known_hosts
from console.demo.node import DemoNode
from console.demo.provider_api import BackupProvider
from console.demo.traffic import TrafficGenerator, TrafficProfile

_log = logging.getLogger(__name__)
TICK_S = 0.5
WARM_UP_S = 30.0  # simulated seconds of traffic run before the fleet is handed over
_BOOT_S = 2.0
_DETERMINISTIC_BOOT_S = 0.5
_CALL_TIMEOUT_S = 30.0
MAX_NODES = 64
# Every SSH exec leaves a reference cycle behind (asyncssh's channel, process and streams point
# at each other), and so does every HTTP connection (asyncio's transport). CPython frees cycles
# that reach its oldest generation only when that generation has grown by a quarter, which in
# a large process (the console's) takes long while the garbage piles up: collect on a clock.
COLLECT_EVERY_S = 60.0

Undo = Callable[[], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class EndpointPlan:
    name: str
    model: str
    traffic: TrafficProfile


# The first half of the nodes serves the small model, the rest the large one.
_PLANS = (
    EndpointPlan(
        name="chat-primary",
        model="meta-llama/Llama-3.1-8B-Instruct",
        traffic=TrafficProfile(
            5.0, prompt_tokens=3000, output_tokens=180, max_tokens=1024, cached_fraction=0.3
        ),
    ),
    EndpointPlan(
        name="chat-large",
        model="meta-llama/Llama-3.1-70B-Instruct",
        traffic=TrafficProfile(
            1.2, prompt_tokens=2500, output_tokens=150, max_tokens=1024, cached_fraction=0.3
        ),
    ),
)


@dataclass
class _Group:
    plan: EndpointPlan
    nodes: list[DemoNode]
    traffic: TrafficGenerator


@dataclass
class _ActiveFault:
    undo: Undo
    timer: asyncio.Task | None


class DemoFleet:
    """Simulated GPU nodes (real SSH and HTTP servers on 127.0.0.1) plus a backup provider."""

    # What inject() accepts, for UIs that offer a choice; ``faults=`` schedules some at start.
    faults: ClassVar[dict[str, str]] = FAULTS

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 4,
        gpus_per_node: int = 8,
        seed: int = 0,
        faults: Sequence[FaultSpec] = (),
        traffic: bool = True,
        store: Path | None = None,
        deterministic: bool = False,
    ) -> None:
        # Every node is two servers in this one process: past 64 the demo stops being quick.
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}")
        if not 1 <= gpus_per_node <= 8:
            raise ValueError("gpus_per_node must be between 1 and 8")
        self.workdir = workdir.resolve()
        self.node_names = [f"gpu-a{i + 1}" for i in range(nodes)]
        for spec in faults:
            resolve_target(spec.name, spec.target, self.node_names)
        self.config_path = self.workdir / "config.yaml"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.client_key_path = self.workdir / "id_ed25519"
        self.store = store if store is not None else self.workdir / "demo.db"
        self.ssh_ports: dict[str, int] = {}
        self.http_ports: dict[str, int] = {}
        self.backup_port = 0
        self._gpus = gpus_per_node
        self._seed = seed
        self._scheduled = tuple(faults)
        self._traffic_on = traffic
        self._deterministic = deterministic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nodes: dict[str, DemoNode] = {}
        self._groups: list[_Group] = []
        self._backup_faults = ActiveFaults()
        self._backup: HttpServer | None = None
        self._provider: BackupProvider | None = None
        self._active: dict[tuple[str, str], _ActiveFault] = {}
        self._tasks: list[asyncio.Task] = []
        self._versions = 0

    # -- lifecycle (any thread) ---------------------------------------------------------------

    def start(self) -> Path:
        """Start every server on a background thread; returns once all listen (idempotent)."""
        if self._thread is not None:
            return self.config_path
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="demo-fleet", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=_CALL_TIMEOUT_S)
        except BaseException:
            if self._thread.is_alive():  # start-up timed out: stop it, or join() waits forever
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._thread = self._loop = None
            raise
        return self.config_path

    def stop(self) -> None:
        """Close every server and end the thread; safe to call twice."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = None

    def __enter__(self) -> DemoFleet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def inject(self, name: str, target: str | None = None, duration_s: float | None = None) -> str:
        """Apply a fault now (until heal() or ``duration_s``); returns a one-line description."""
        resolved = resolve_target(name, target, self.node_names)
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be more than 0 seconds")
        return self._call(self._inject(name, resolved, duration_s))

    def targets(self, name: str) -> list[str]:
        """What fault ``name`` can be injected into, its default first."""
        return fault_targets(name, self.node_names)

    def heal(self) -> None:
        """Clear every active fault."""
        self._call(self._heal_all())

    def active_faults(self) -> list[tuple[str, str]]:
        """(fault, target) of every fault in place now."""
        return self._call(self._list_faults())

    def engine_args(self, node: str) -> EngineArgs | None:
        """The settings ``node``'s engine runs with now; None while it is down or starting."""
        engine = self._nodes[node].service.engine
        return engine.args if engine is not None else None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError("the demo fleet is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("call the demo fleet from another thread than its own")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=_CALL_TIMEOUT_S)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            loop.run_until_complete(self._shutdown())
            started.set_exception(exc)
        else:
            started.set_result(None)
            loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    # -- on the fleet's loop --------------------------------------------------------------------

    async def _start(self) -> None:
        self._nodes, self._groups, self._tasks, self._active = {}, [], [], {}
        rng = None if self._deterministic else random.Random(self._seed)
        boot_s = _DETERMINISTIC_BOOT_S if self._deterministic else _BOOT_S
        client_key = ensure_key(self.client_key_path, "llmops@demo")
        # Only the variable's name goes in config.yaml; the key lives in the environment.
        api_key = os.environ.setdefault(BACKUP_KEY_ENV, f"sk-demo-{secrets.token_hex(16)}")
        half = (len(self.node_names) + 1) // 2
        groups = [self.node_names[:half], self.node_names[half:]]
        tp = 1 << (self._gpus.bit_length() - 1)  # largest power of two that fits the node
        for plan, names in zip(_PLANS, groups, strict=True):
            if not names:
                continue
            args = EngineArgs(
                plan.model, (plan.model,), _revision(plan.model, 0), tensor_parallel_size=tp
            )
            members = []
            for name in names:
                node = DemoNode(
                    name,
                    self.workdir / "nodes" / name,
                    gpus=self._gpus,
                    seed=self._seed,
                    rng=rng,
                    boot_s=boot_s,
                    client_key=client_key,
                    default_args=args,
                )
                await node.start()
                self._nodes[name] = node
                members.append(node)
            traffic = TrafficGenerator(plan.traffic, len(members), rng)
            self._groups.append(_Group(plan, members, traffic))
        provider = BackupProvider(api_key, self._backup_faults, rng, id_sequence(BACKUP_PROVIDER))
        self._provider = provider
        self._backup = HttpServer(provider.handle, server_header="demo-provider")
        self.backup_port = await self._backup.start()
        self.ssh_ports = {n.name: n.ssh.port for n in self._nodes.values()}
        self.http_ports = {n.name: n.http.port for n in self._nodes.values()}
        if self._traffic_on:
            # Open in steady state: a demo, or `status --demo`, should not show an idle fleet.
            for _ in range(round(WARM_UP_S / TICK_S)):
                self._tick()
        self._write_files()
        self._tasks.append(asyncio.create_task(self._tick_loop()))
        self._tasks.extend(asyncio.create_task(self._scheduled_fault(s)) for s in self._scheduled)

    def _write_files(self) -> None:
        write_known_hosts(
            self.known_hosts_path,
            [(HOST, n.ssh.port, n.host_key) for n in self._nodes.values()],
        )
        entries = {
            n.name: NodeEntry(n.name, n.ssh.port, n.http.port, self._gpus)
            for n in self._nodes.values()
        }
        write_config(
            self.config_path,
            store=self.store,
            known_hosts=self.known_hosts_path,
            identity_file=self.client_key_path,
            nodes=list(entries.values()),
            endpoints=[
                EndpointEntry(g.plan.name, g.plan.model, tuple(entries[n.name] for n in g.nodes))
                for g in self._groups
            ],
            backup_port=self.backup_port,
        )

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        collect_at = loop.time() + COLLECT_EVERY_S
        while True:
            await asyncio.sleep(TICK_S)
            self._tick()
            if loop.time() >= collect_at:
                gc.collect()
                collect_at = loop.time() + COLLECT_EVERY_S

    def _tick(self) -> None:
        if self._traffic_on:
            for group in self._groups:
                serving = [
                    (n.service.engine, n.faults)
                    for n in group.nodes
                    if n.up and n.service.engine is not None
                ]
                group.traffic.tick(TICK_S, serving)
        for node in self._nodes.values():
            node.tick(TICK_S)

    async def _scheduled_fault(self, spec: FaultSpec) -> None:
        await asyncio.sleep(spec.at_s)
        target = resolve_target(spec.name, spec.target, self.node_names)
        try:
            _log.info("demo fault: %s", await self._inject(spec.name, target, spec.duration_s))
        except ValueError as exc:  # e.g. an args file someone broke by hand
            _log.warning("demo fault %s not injected: %s", spec.name, exc)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for fault in self._active.values():
            if fault.timer is not None:
                fault.timer.cancel()
        self._active.clear()
        for node in self._nodes.values():
            await node.go_down()
        if self._backup is not None:
            await self._backup.stop()

    async def _inject(self, name: str, target: str, duration_s: float | None) -> str:
        key = (name, target)
        previous = self._active.pop(key, None)
        if previous is not None and previous.timer is not None:
            previous.timer.cancel()
        if previous is not None:
            undo, description = previous.undo, f"{name} on {target}: extended"
        else:
            undo, description = await self._apply(name, target)
        timer = None
        if duration_s is not None:
            timer = asyncio.create_task(self._expire(key, duration_s))
        self._active[key] = _ActiveFault(undo, timer)
        until = f" for {duration_s:g} s" if duration_s is not None else " until healed"
        return description + until

    async def _list_faults(self) -> list[tuple[str, str]]:
        return list(self._active)

    async def _expire(self, key: tuple[str, str], duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        fault = self._active.pop(key, None)
        if fault is not None:
            await fault.undo()

    async def _heal_all(self) -> None:
        active, self._active = self._active, {}
        for fault in active.values():
            if fault.timer is not None:
                fault.timer.cancel()
            await fault.undo()

    async def _apply(self, name: str, target: str) -> tuple[Undo, str]:
        """Put the fault in place; return how to take it away, and what happened."""
        if name in ("provider-5xx", "provider-429"):
            faults = (
                self._backup_faults if target == BACKUP_PROVIDER else self._nodes[target].faults
            )
            status = 503 if name == "provider-5xx" else 429
            faults.chat_error_status = status

            async def clear_status() -> None:
                if faults.chat_error_status == status:
                    faults.chat_error_status = None

            extra = f" (retry-after {RETRY_AFTER_S}s)" if status == 429 else ""
            return clear_status, f"{name} on {target}: chat requests get {status}{extra}"
        if target == BACKUP_PROVIDER:  # model-version-change, the only other fault it takes
            provider = self._provider
            assert provider is not None
            dated = provider.change_version()

            async def roll_back_provider() -> None:
                provider.roll_back()

            return roll_back_provider, f"{name} on {target}: aliases now answer as {dated}"
        node = self._nodes[target]
        if name == "latency-spike":
            node.faults.slowdown = SLOWDOWN

            async def end_spike() -> None:
                node.faults.slowdown = 1.0

            return end_spike, f"{name} on {target}: engine steps take {SLOWDOWN:g}x longer"
        if name == "token-blowup":
            node.faults.token_blowup = True

            async def end_blowup() -> None:
                node.faults.token_blowup = False

            return end_blowup, f"{name} on {target}: completions run to max_tokens"
        if name == "node-down":
            await node.go_down()
            ports = f"SSH :{node.ssh.port} and HTTP :{node.http.port}"
            return node.come_up, f"{name} on {target}: {ports} refuse connections"
        return self._change_version(node)  # model-version-change

    def _change_version(self, node: DemoNode) -> tuple[Undo, str]:
        """Redeploy ``node`` with a new revision, served under a new name (old one kept)."""
        before = node.args_path.read_text()
        try:
            args = parse_engine_args(before)
        except ValueError as exc:
            raise ValueError(f"cannot change the model on {node.name}: {exc}") from exc
        self._versions += 1
        revision = _revision(args.model, self._versions)
        new_name = f"{args.model}@{revision[:8]}"
        names = (new_name, *(n for n in args.served_model_names if "@" not in n))
        node.args_path.write_text(
            render_engine_args(replace(args, revision=revision, served_model_names=names))
        )
        node.restart_engine()

        async def roll_back() -> None:
            node.args_path.write_text(before)
            node.restart_engine()

        return roll_back, f"model-version-change on {node.name}: now serving {new_name}"


def _revision(model: str, version: int) -> str:
    """A stable, commit-like revision hash for a model's n-th deploy."""
    return hashlib.sha1(f"{model}#{version}".encode()).hexdigest()
