"""The demo fleet: nodes, gateway, providers, traffic and faults on one background event loop.

Everything runs in one thread with its own asyncio loop, so the simulation never competes
with the caller's loop (a Textual app, a test) and needs no locks: calls from other threads
(:meth:`DemoFleet.inject`, :meth:`DemoFleet.heal`, :meth:`DemoFleet.stop`) are handed to the
loop, and the few read-outs for tests (:meth:`DemoFleet.engine_args`,
:meth:`DemoFleet.router_weights`, ...) read attributes the loop replaces whole. The fleet writes
a config.yaml that the console reads like any other; it must not import anything from the
console's UI.
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
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from console.demo.completions import id_sequence
from console.demo.config_file import (
    API_MODEL,
    BACKUP_KEY_ENV,
    BACKUP_UPSTREAM,
    PRIMARY_KEY_ENV,
    PRIMARY_UPSTREAM,
    EndpointEntry,
    NodeEntry,
    RouterEntry,
    write_config,
    write_prometheus_config,
)
from console.demo.engine_args import (
    EngineArgs,
    parse_engine_args,
    render_engine_args,
    with_revision,
)
from console.demo.faults import (
    BACKUP_PROVIDER,
    FAULTS,
    LONG_PROMPT_FACTOR,
    LONG_PROMPT_SHARE,
    PRIMARY_PROVIDER,
    RETRY_AFTER_S,
    SLOWDOWN,
    ActiveFaults,
    FaultSpec,
    fault_targets,
    model_groups,
    resolve_target,
)
from console.demo.gateway import GATEWAY, Gateway
from console.demo.http_server import HOST, HttpServer
from console.demo.keys import ensure_key, write_known_hosts
from console.demo.node import DemoNode
from console.demo.provider_api import ProviderApi
from console.demo.router_config import ROUTE_API, ROUTE_CHAT, Upstream
from console.demo.traffic import TrafficGenerator, TrafficProfile, TrafficTarget

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
    routed: bool  # its clients go through the gateway's chat route (the router's weights)


# The first half of the nodes serves the small model behind the gateway, the rest the large one.
PLANS = (
    EndpointPlan(
        name="chat-primary",
        model="meta-llama/Llama-3.1-8B-Instruct",
        traffic=TrafficProfile(
            5.0, prompt_tokens=3000, output_tokens=180, max_tokens=1024, cached_fraction=0.3
        ),
        routed=True,
    ),
    EndpointPlan(
        name="chat-large",
        model="meta-llama/Llama-3.1-70B-Instruct",
        traffic=TrafficProfile(
            1.2, prompt_tokens=2500, output_tokens=150, max_tokens=1024, cached_fraction=0.3
        ),
        routed=False,
    ),
)


@dataclass
class _Group:
    plan: EndpointPlan
    nodes: list[DemoNode]
    traffic: TrafficGenerator


@dataclass
class _Provider:
    api: ProviderApi
    faults: ActiveFaults
    server: HttpServer


@dataclass
class _ActiveFault:
    undo: Undo
    timer: asyncio.Task | None


class DemoFleet:
    """Simulated GPU nodes, a gateway (real SSH and HTTP servers on 127.0.0.1) and two API
    providers, primary and backup."""

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
        # A scrape config for a real Prometheus: every engine and dcgm-exporter, by node.
        self.prometheus_config_path = self.workdir / "prometheus.yml"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.client_key_path = self.workdir / "id_ed25519"
        self.store = store if store is not None else self.workdir / "demo.db"
        self.ssh_ports: dict[str, int] = {}
        self.http_ports: dict[str, int] = {}
        self.dcgm_ports: dict[str, int] = {}  # each node's dcgm-exporter
        self.gateway_name = GATEWAY
        self.gateway_ssh_port = 0
        self.router_port = 0  # the gateway's router: OpenAI-compatible HTTP
        self.primary_port = 0
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
        self._providers: dict[str, _Provider] = {}
        self._gateway: Gateway | None = None
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

    def served_revision(self, node: str) -> str | None:
        """The model revision ``node``'s engine runs now; None while it is down or starting."""
        args = self.engine_args(node)
        return args.revision if args is not None else None

    def router_weights(self, route: str) -> dict[str, float]:
        """The weights the router spreads ``route`` by now: what it last loaded, not what its
        file says ({} for an unknown route, or while the router is down)."""
        table = self._running_gateway().router.table
        return table.weights(route) if table is not None else {}

    def router_file(self) -> str:
        """The router's configuration file as it is on the gateway now."""
        return self._running_gateway().config_path.read_text()

    def _running_gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the demo fleet is not running")
        return self._gateway

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
        self._providers, self._gateway = {}, None
        rng = None if self._deterministic else random.Random(self._seed)
        boot_s = _DETERMINISTIC_BOOT_S if self._deterministic else _BOOT_S
        client_key = ensure_key(self.client_key_path, "llmops@demo")
        tp = 1 << (self._gpus.bit_length() - 1)  # largest power of two that fits the node
        for plan, names in zip(PLANS, model_groups(self.node_names), strict=True):
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
                    # Every other node has python3 and nvidia-ml-py (GPUs read with NVML); the
                    # rest have nvidia-smi only: the demo shows both, as a mixed fleet does.
                    nvml=self.node_names.index(name) % 2 == 0,
                )
                await node.start()
                self._nodes[name] = node
                members.append(node)
            traffic = TrafficGenerator(plan.traffic, len(members), rng)
            self._groups.append(_Group(plan, members, traffic))
        for name, key_env in (
            (PRIMARY_PROVIDER, PRIMARY_KEY_ENV),
            (BACKUP_PROVIDER, BACKUP_KEY_ENV),
        ):
            # Only the variable's name goes in config.yaml; the key lives in the environment.
            api_key = os.environ.setdefault(key_env, f"sk-demo-{secrets.token_hex(16)}")
            faults = ActiveFaults()
            api = ProviderApi(api_key, faults, rng, id_sequence(name))
            server = HttpServer(api.handle, server_header="demo-provider")
            await server.start()
            self._providers[name] = _Provider(api, faults, server)
        self.primary_port = self._providers[PRIMARY_PROVIDER].server.port
        self.backup_port = self._providers[BACKUP_PROVIDER].server.port
        self._gateway = Gateway(
            GATEWAY,
            self.workdir / "gateway" / GATEWAY,
            rng=rng,
            client_key=client_key,
            upstreams=self._upstreams(),
        )
        await self._gateway.start()
        self.gateway_ssh_port = self._gateway.ssh.port
        self.router_port = self._gateway.http.port
        self.ssh_ports = {n.name: n.ssh.port for n in self._nodes.values()}
        self.http_ports = {n.name: n.http.port for n in self._nodes.values()}
        self.dcgm_ports = {n.name: n.dcgm.port for n in self._nodes.values()}
        if self._traffic_on:
            # Open in steady state: a demo, or `status --demo`, should not show an idle fleet.
            for _ in range(round(WARM_UP_S / TICK_S)):
                self._tick()
        self._write_files()
        self._tasks.append(asyncio.create_task(self._tick_loop()))
        self._tasks.extend(asyncio.create_task(self._scheduled_fault(s)) for s in self._scheduled)

    def _upstreams(self) -> list[Upstream]:
        """The router's first configuration: the routed group's nodes, evenly; the primary API
        with all of chat-api's traffic, the backup with none."""
        routed = next(g for g in self._groups if g.plan.routed)
        chat = [
            Upstream(
                n.name,
                ROUTE_CHAT,
                f"openai/{routed.plan.model}",
                f"http://{HOST}:{n.http.port}/v1",
                weight=100 // len(routed.nodes),
            )
            for n in routed.nodes
        ]
        api = [
            Upstream(
                upstream,
                ROUTE_API,
                f"openai/{API_MODEL}",
                f"http://{HOST}:{port}/v1",
                weight=weight,
                api_key_env=key_env,
            )
            for upstream, port, weight, key_env in (
                (PRIMARY_UPSTREAM, self.primary_port, 100, PRIMARY_KEY_ENV),
                (BACKUP_UPSTREAM, self.backup_port, 0, BACKUP_KEY_ENV),
            )
        ]
        return [*chat, *api]

    def _write_files(self) -> None:
        gateway = self._running_gateway()
        write_known_hosts(
            self.known_hosts_path,
            [
                *((HOST, n.ssh.port, n.host_key) for n in self._nodes.values()),
                (HOST, gateway.ssh.port, gateway.host_key),
            ],
        )
        entries = {
            n.name: NodeEntry(
                n.name, n.ssh.port, n.http.port, self._gpus, n.default_args.revision, n.dcgm.port
            )
            for n in self._nodes.values()
        }
        write_prometheus_config(self.prometheus_config_path, list(entries.values()))
        routed = next(g for g in self._groups if g.plan.routed)
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
            primary_port=self.primary_port,
            backup_port=self.backup_port,
            router=RouterEntry(
                gateway.name,
                gateway.ssh.port,
                gateway.http.port,
                tuple(n.name for n in routed.nodes),
            ),
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
                self._send_traffic(group)
        for node in self._nodes.values():
            node.tick(TICK_S)

    def _send_traffic(self, group: _Group) -> None:
        """The group's arrivals of one tick, to its nodes serving now. The routed group's split
        follows the weights the router loaded for its chat route (a node it does not list gets
        nothing); when no node serving has a weight above 0 there, its arrivals are dropped and
        counted as failed at the gateway. The others split evenly."""
        router = self._running_gateway().router
        table = router.table
        weights = table.weights(ROUTE_CHAT) if table is not None else {}
        targets = []
        for node in group.nodes:
            engine = node.service.engine
            if node.up and engine is not None:
                weight = weights.get(node.name, 0.0) if group.plan.routed else 1.0
                targets.append(TrafficTarget(node.name, engine, node.faults, weight))
        dropped = group.traffic.tick(TICK_S, targets)
        if group.plan.routed:
            router.failed_requests += dropped

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
        if self._gateway is not None:
            await self._gateway.stop()
        for provider in self._providers.values():
            await provider.server.stop()

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
        provider = self._providers.get(target)
        if name in ("provider-5xx", "provider-429"):
            faults = provider.faults if provider is not None else self._nodes[target].faults
            status = 503 if name == "provider-5xx" else 429
            faults.chat_error_status = status

            async def clear_status() -> None:
                if faults.chat_error_status == status:
                    faults.chat_error_status = None

            extra = f" (retry-after {RETRY_AFTER_S}s)" if status == 429 else ""
            return clear_status, f"{name} on {target}: chat requests get {status}{extra}"
        if provider is not None:  # model-version-change, the only other fault a provider takes
            api = provider.api
            dated = api.change_version()

            async def roll_back_provider() -> None:
                api.roll_back()

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
        if name == "long-prompts":
            node.faults.long_prompts = True

            async def end_long_prompts() -> None:
                node.faults.long_prompts = False

            share = f"{LONG_PROMPT_SHARE:.0%} of its requests carry {LONG_PROMPT_FACTOR}x prompts"
            return end_long_prompts, f"{name} on {target}: {share}"
        if name == "node-down":
            await node.go_down()
            ports = f"SSH :{node.ssh.port} and HTTP :{node.http.port}"
            return node.come_up, f"{name} on {target}: {ports} refuse connections"
        if name == "bad-revision":
            return self._deploy_bad_revision(node)
        if name == "bad-canary":
            return self._pin_good_revision(node)
        return self._change_version(node)  # model-version-change

    def _next_revision(self, node: DemoNode, doing: str) -> tuple[str, EngineArgs, str]:
        """``node``'s args file as it is, read, and a revision it has not run yet."""
        before = node.args_path.read_text()
        try:
            args = parse_engine_args(before)
        except ValueError as exc:
            raise ValueError(f"cannot {doing} on {node.name}: {exc}") from exc
        self._versions += 1
        return before, args, _revision(args.model, self._versions)

    def _deploy_bad_revision(self, node: DemoNode) -> tuple[Undo, str]:
        """What a careful deploy tool does, with a bad build: keep the args file beside itself,
        write the new revision into it (the served name stays) and restart."""
        before, _, revision = self._next_revision(node, "deploy a new revision")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = node.args_path.with_name(f"{node.args_path.name}.{stamp}")
        kept.write_text(before)
        node.args_path.write_text(with_revision(before, revision))
        node.faults.bad_revisions.add(revision)
        node.restart_engine()

        async def roll_back() -> None:
            node.faults.bad_revisions.discard(revision)
            if _file_revision(node) == revision:  # nobody has rolled it back yet
                node.args_path.write_text(before)
                node.restart_engine()

        return roll_back, (
            f"bad-revision on {node.name}: restarted on revision {revision}, a bad one "
            f"(the previous args kept as {kept.name})"
        )

    def _pin_good_revision(self, node: DemoNode) -> tuple[Undo, str]:
        """Make every revision but the one ``node`` runs now bad there (a canary's next deploy)."""
        engine = node.service.engine
        good = engine.args.revision if engine is not None else _file_revision(node)
        if good is None:
            raise ValueError(
                f"cannot tell which revision {node.name} runs: its args file is broken"
            )
        faults = node.faults
        faults.good_revision = good

        async def unpin() -> None:
            if faults.good_revision == good:
                faults.good_revision = None

        return unpin, f"bad-canary on {node.name}: any revision but {good} is bad there"

    def _change_version(self, node: DemoNode) -> tuple[Undo, str]:
        """Redeploy ``node`` with a new revision, served under a new name (old one kept)."""
        before, args, revision = self._next_revision(node, "change the model")
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


def _file_revision(node: DemoNode) -> str | None:
    """The revision ``node``'s args file names; None when vLLM would not read the file."""
    try:
        return parse_engine_args(node.args_path.read_text()).revision
    except (OSError, ValueError):
        return None


def _revision(model: str, version: int) -> str:
    """A stable, commit-like revision for a model's n-th deploy: 12 hex digits, a short commit
    hash, because console.config refuses a full 40-digit one as secret-shaped."""
    return hashlib.sha1(f"{model}#{version}".encode()).hexdigest()[:12]
