"""The demo's gateway gw-1: its router's file over SSH, reloads, and where requests then go.

Over real SSH (asyncssh with the demo's known_hosts and client key) and real HTTP, as the
console meets them: a weights file written with SFTP changes nothing until
``systemctl reload llm-router``; then the router's choice moves, for real requests (the
``x-llm-router-upstream`` header says who answered) and for the simulated traffic of the nodes
behind it. A broken file fails the reload and the old routes stay.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from console.config import load_config
from console.demo import DemoFleet
from console.demo.engine_args import EngineArgs
from console.demo.engine_sim import EngineSim
from console.demo.faults import ActiveFaults
from console.demo.traffic import TrafficGenerator, TrafficProfile, TrafficTarget
from tests.test_demo_fleet import SMALL, chat_body, engine_url

ROUTER_FILE = "/etc/llm-router/config.yaml"
RELOAD = "sudo systemctl reload llm-router"
UPSTREAM = "x-llm-router-upstream"
SUCCESS = "vllm:request_success"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    """Two nodes behind the router (of four), no simulated traffic."""
    with DemoFleet(tmp_path, nodes=4, traffic=False, deterministic=True) as demo:
        yield demo


def connect_gateway(fleet: DemoFleet) -> asyncssh.connect:
    return asyncssh.connect(
        "127.0.0.1",
        port=fleet.gateway_ssh_port,
        username="llmops",
        known_hosts=str(fleet.known_hosts_path),
        client_keys=[str(fleet.client_key_path)],
        agent_path=None,
        config=None,
    )


async def read_routes(conn: asyncssh.SSHClientConnection) -> dict:
    async with conn.start_sftp_client() as sftp, sftp.open(ROUTER_FILE) as f:
        return yaml.safe_load(await f.read())


async def write_file(conn: asyncssh.SSHClientConnection, text: str) -> None:
    async with conn.start_sftp_client() as sftp, sftp.open(ROUTER_FILE, "w") as f:
        await f.write(text)


def set_weights(routes: dict, weights: dict[str, float]) -> str:
    for entry in routes["model_list"]:
        name = entry["model_info"]["id"]
        if name in weights:
            entry["litellm_params"]["weight"] = weights[name]
    return yaml.safe_dump(routes, sort_keys=False)


async def answered_by(
    client: httpx.AsyncClient, fleet: DemoFleet, route: str, count: int, stream: bool = False
) -> list[str]:
    """Who answered each of ``count`` chat requests to ``route`` through the router."""
    url = f"http://127.0.0.1:{fleet.router_port}/v1/chat/completions"
    body = chat_body(route, max_tokens=4, stream=stream)
    upstreams = []
    for _ in range(count):
        response = await client.post(url, json=body)
        assert response.status_code == 200, response.text
        upstreams.append(response.headers[UPSTREAM])
    return upstreams


async def test_a_reload_moves_the_routers_choice(fleet: DemoFleet) -> None:
    async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
        routes = await read_routes(conn)
        assert fleet.router_weights("chat-api") == {"primary-api": 100, "backup-api": 0}
        assert set(await answered_by(client, fleet, "chat-api", 5)) == {"primary-api"}
        await write_file(conn, set_weights(routes, {"primary-api": 0, "backup-api": 100}))
        # Written, not reloaded: the router still routes by what it loaded.
        assert "weight: 100" in (await conn.run(f"cat {ROUTER_FILE}")).stdout
        assert fleet.router_weights("chat-api")["primary-api"] == 100
        assert set(await answered_by(client, fleet, "chat-api", 5)) == {"primary-api"}
        reload = await conn.run(RELOAD)
        assert reload.exit_status == 0, reload.stderr
        assert fleet.router_weights("chat-api") == {"primary-api": 0, "backup-api": 100}
        assert set(await answered_by(client, fleet, "chat-api", 20)) == {"backup-api"}
        assert set(await answered_by(client, fleet, "chat-api", 3, stream=True)) == {"backup-api"}
        journal = await conn.run("journalctl -u llm-router -n 3 --no-pager")
    assert "Reloaded llm-router.service" in journal.stdout


async def test_the_chat_route_spreads_by_weight_and_skips_a_node_that_is_down(
    fleet: DemoFleet,
) -> None:
    async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
        assert fleet.router_weights("chat") == {"gpu-a1": 50, "gpu-a2": 50}
        even = await answered_by(client, fleet, "chat", 20)
        routes = await read_routes(conn)
        await write_file(conn, set_weights(routes, {"gpu-a1": 0}))
        assert (await conn.run(RELOAD)).exit_status == 0
        only = await answered_by(client, fleet, "chat", 20)
        await write_file(conn, set_weights(routes, {"gpu-a1": 50}))
        assert (await conn.run(RELOAD)).exit_status == 0
        fleet.inject("node-down", "gpu-a1")
        failover = await answered_by(client, fleet, "chat", 10)
    assert even.count("gpu-a1") == even.count("gpu-a2") == 10  # smooth round robin
    assert set(only) == {"gpu-a2"}
    assert set(failover) == {"gpu-a2"}  # the router retried the other node


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda text: text + "model_list: [\n", "not valid YAML"),
        (lambda text: "router_settings: {}\n", "no model_list"),
        (lambda text: text.replace("    api_base:", "    base:", 1), "model_list[0]: no litellm"),
        (lambda text: text.replace("weight: 50", "weight: -1", 1), "weight -1 is not a number"),
        (lambda text: text.replace("weight: 50", "weight: lots", 1), "'lots' is not a number"),
        (lambda text: text.replace("id: gpu-a2", "id: gpu-a1"), "'gpu-a1' is used twice"),
    ],
    ids=["yaml", "no-model-list", "no-api-base", "negative", "not-a-number", "duplicate-id"],
)
async def test_a_broken_file_fails_the_reload_and_the_old_routes_stay(
    fleet: DemoFleet, edit, reason: str
) -> None:
    before = fleet.router_weights("chat")
    async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
        await write_file(conn, edit(fleet.router_file()))
        reload = await conn.run(RELOAD)
        journal = await conn.run("journalctl -u llm-router -n 4 --no-pager")
        active = await conn.run("systemctl is-active llm-router")
        served = await answered_by(client, fleet, "chat", 4)
    assert reload.exit_status == 1
    assert reason in reload.stderr
    assert "Job for llm-router.service failed" in reload.stderr
    assert reason in journal.stdout
    assert "Reload failed for llm-router.service" in journal.stdout
    assert active.stdout == "active\n"
    assert fleet.router_weights("chat") == before
    assert sorted(set(served)) == ["gpu-a1", "gpu-a2"]


async def test_weights_of_zero_answer_503_and_an_unknown_route_404(fleet: DemoFleet) -> None:
    url = f"http://127.0.0.1:{fleet.router_port}"
    async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
        routes = await read_routes(conn)
        await write_file(conn, set_weights(routes, {"primary-api": 0}))
        assert (await conn.run(RELOAD)).exit_status == 0
        nobody = await client.post(url + "/v1/chat/completions", json=chat_body("chat-api"))
        unknown = await client.post(url + "/v1/chat/completions", json=chat_body(SMALL))
        models = (await client.get(url + "/v1/models")).json()
        health = await client.get(url + "/health")
    assert fleet.router_weights("chat-api") == {"primary-api": 0, "backup-api": 0}
    assert nobody.status_code == 503
    assert nobody.json()["error"]["type"] == "server_error"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert [m["id"] for m in models["data"]] == ["chat", "chat-api"]
    assert health.status_code == 200


async def test_a_restart_on_a_broken_file_takes_the_router_down_until_fixed(
    fleet: DemoFleet,
) -> None:
    url = f"http://127.0.0.1:{fleet.router_port}/health"
    good = fleet.router_file()
    async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
        await write_file(conn, "model_list: []\n")
        restart = await conn.run("sudo systemctl restart llm-router.service")
        status = await conn.run("systemctl status llm-router")
        with pytest.raises(httpx.TransportError):  # nothing answers behind the port
            await client.get(url)
        reload = await conn.run(RELOAD)
        await write_file(conn, good)
        again = await conn.run("sudo systemctl restart llm-router")
        healthy = await client.get(url)
    assert restart.exit_status == 1 and "model_list" in restart.stderr
    assert status.exit_status == 3
    assert "Active: failed (Result: exit-code)" in status.stdout
    assert reload.exit_status == 1
    assert reload.stderr == "llm-router.service is not active, cannot reload.\n"
    assert again.exit_status == 0
    assert healthy.status_code == 200
    assert fleet.router_weights("chat") == {"gpu-a1": 50, "gpu-a2": 50}


async def test_gateway_commands_and_its_config_entry(fleet: DemoFleet) -> None:
    async with connect_gateway(fleet) as conn:
        hostname = await conn.run("hostname")
        status = await conn.run("timeout 10 sudo systemctl status llm-router")
        vllm = await conn.run("systemctl status vllm")
        gpus = await conn.run("nvidia-smi")
    assert hostname.stdout == "gw-1\n"
    assert status.exit_status == 0
    assert status.stdout.startswith("● llm-router.service - ")
    assert vllm.exit_status == 4  # no engine on the gateway
    assert gpus.exit_status == 127  # and no GPU
    config = load_config(fleet.config_path)
    assert [n.name for n in config.nodes] == fleet.node_names  # the gateway is no node
    (router,) = config.routers
    assert (router.name, router.port, router.file) == ("gw-1", fleet.gateway_ssh_port, ROUTER_FILE)
    assert router.reload_command == RELOAD
    assert router.endpoint == "gateway"
    assert {name: (u.node or u.endpoint) for name, u in router.upstreams.items()} == {
        "gpu-a1": "gpu-a1",
        "gpu-a2": "gpu-a2",
        "primary-api": "chat-api",
        "backup-api": "chat-backup",
    }
    endpoints = {e.name: e for e in config.endpoints}
    assert endpoints["gateway"].base_url == f"http://127.0.0.1:{fleet.router_port}/v1"
    assert endpoints["gateway"].model == "chat-api" and endpoints["gateway"].api_key_env is None
    assert endpoints["chat-api"].base_url == f"http://127.0.0.1:{fleet.primary_port}/v1"
    assert endpoints["chat-api"].api_key_env == "LLMOPS_DEMO_PRIMARY_KEY"
    assert os.environ["LLMOPS_DEMO_PRIMARY_KEY"] not in fleet.config_path.read_text()
    for node in config.nodes:
        assert node.engine is not None
        assert node.engine.pinned_revision == fleet.served_revision(node.name)


def test_one_node_makes_a_chat_route_of_one(tmp_path: Path) -> None:
    with DemoFleet(tmp_path, nodes=1, traffic=False, deterministic=True) as fleet:
        assert fleet.router_weights("chat") == {"gpu-a1": 100}
        (router,) = load_config(fleet.config_path).routers
    assert set(router.upstreams) == {"gpu-a1", "primary-api", "backup-api"}


# -- the simulated traffic behind the router ---------------------------------------------------


async def successes(client: httpx.AsyncClient, fleet: DemoFleet, node: str) -> float:
    text = (await client.get(engine_url(fleet, node) + "/metrics")).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == SUCCESS]
    return sum(s.value for s in family.samples if s.name == SUCCESS + "_total")


async def in_flight(client: httpx.AsyncClient, fleet: DemoFleet, node: str) -> float:
    text = (await client.get(engine_url(fleet, node) + "/metrics")).text
    gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    return sum(f.samples[0].value for f in text_string_to_metric_families(text) if f.name in gauges)


async def eventually(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


async def test_simulated_traffic_follows_the_loaded_weights(tmp_path: Path) -> None:
    with DemoFleet(tmp_path, nodes=4, deterministic=True) as fleet:
        async with connect_gateway(fleet) as conn, httpx.AsyncClient() as client:
            routes = await read_routes(conn)
            await write_file(conn, set_weights(routes, {"gpu-a1": 0}))
            assert (await conn.run(RELOAD)).exit_status == 0

            async def drained() -> bool:  # what gpu-a1 had in flight has finished
                return await in_flight(client, fleet, "gpu-a1") == 0

            await eventually(drained, "gpu-a1 drained")
            stopped = await successes(client, fleet, "gpu-a1")
            other = await successes(client, fleet, "gpu-a2")

            async def others_served() -> bool:
                return await successes(client, fleet, "gpu-a2") >= other + 20

            await eventually(others_served, "gpu-a2 served 20 more")
            assert await successes(client, fleet, "gpu-a1") == stopped


def finished(engine: EngineSim) -> float:
    labels = {"model_name": SMALL, "engine": "0", "finished_reason": "stop"}
    value = engine.metrics.registry.get_sample_value(SUCCESS + "_total", labels)
    assert value is not None
    return value


def test_traffic_splits_by_weight_and_drops_what_no_weight_takes() -> None:
    a, b = (EngineSim(EngineArgs(SMALL, (SMALL,), "r"), ActiveFaults()) for _ in range(2))
    traffic = TrafficGenerator(TrafficProfile(4.0, 100, 10, 64, 0.0), 1, rng=None)
    targets = [TrafficTarget("a", a, a.faults, 3.0), TrafficTarget("b", b, b.faults, 1.0)]
    assert traffic.tick(10.0, targets) == 0
    nobody = [TrafficTarget("a", a, a.faults, 0.0), TrafficTarget("b", b, b.faults, 0.0)]
    assert traffic.tick(10.0, nobody) == 40  # the rate is kept: all of it dropped
    assert traffic.tick(10.0, []) == 40
    for engine in (a, b):
        engine.advance(30.0)
    assert (finished(a), finished(b)) == (30, 10)
