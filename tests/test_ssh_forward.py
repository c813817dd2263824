"""Engines bound to a node's localhost, reached through a local port forward over the node's SSH
connection (``engine: {via_ssh: true}``), against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.engines import EngineError
from backends.ssh import SshError
from console.config import Config, load_config
from console.hub import Hub
from tests.loopback_http import LoopbackServer
from tests.sshd import Sshd, sshd_available, start_sshd
from tests.test_hub import metrics

if not sshd_available() and os.environ.get("LLMOPS_REQUIRE_SSHD"):
    raise RuntimeError("LLMOPS_REQUIRE_SSHD is set but OpenSSH sshd is not installed")
pytestmark = pytest.mark.skipif(
    not sshd_available(), reason="OpenSSH sshd is not installed (.ci/run installs it)"
)


@pytest.fixture
def engine() -> Iterator[LoopbackServer]:
    server = LoopbackServer()  # on 127.0.0.1: the sshd's "node" sees it as its localhost
    server.metrics_text = metrics(100)
    yield server
    server.close()


def config_for(tmp_path: Path, sshd: Sshd, engine: LoopbackServer) -> Config:
    port = engine.url.rsplit(":", 1)[1]
    path = tmp_path / "config.yaml"
    path.write_text(f"""
environment: test
ssh:
  user: {sshd.user}
  known_hosts: {sshd.known_hosts}
  identity_files: [{sshd.client_key}]
  config: none
poll: {{gpus: 1h, engine: 200ms, max_backoff: 1s}}
nodes:
  - name: gpu-a1
    host: 127.0.0.1
    port: {sshd.port}
    engine: {{kind: vllm, via_ssh: true, port: {port}}}
""")
    return load_config(path)


async def engine_polls(hub: Hub, count: int) -> None:
    for _ in range(count):
        await hub.poll_once("engine:")


async def test_an_engine_on_the_nodes_localhost_is_scraped_through_the_forward(
    tmp_path: Path, engine: LoopbackServer
) -> None:
    sshd = start_sshd(tmp_path / "sshd")
    try:
        config = config_for(tmp_path, sshd, engine)
        # Built from the engine's port on the node's own localhost, not the node's address.
        assert config.node("gpu-a1").engine.url == f"http://127.0.0.1:{engine.url.rsplit(':')[-1]}"
        hub = Hub(config)
        try:
            await engine_polls(hub, 2)
            statuses = {s.name: s for s in hub.snapshot().sources}
            assert statuses["engine:gpu-a1"].consecutive_failures == 0
            assert hub.readings.engines["gpu-a1"].latest() is not None
            scraper = hub.collectors._scrapers["gpu-a1"]
            # Reached on a local port of the forward, not the engine's own.
            assert scraper.base_url.startswith("http://127.0.0.1:")
            assert scraper.base_url != engine.url
            assert len(engine.requests) >= 2
            # The node restarts (same host key): the forward is made again on the new
            # connection and the scrapes go on, without restarting the console.
            sshd.stop()
            with pytest.raises((SshError, EngineError)):  # the connection or the forward
                await hub.collectors.engine(config.node("gpu-a1"))
            sshd.restart()
            connection = hub.ssh.connection("gpu-a1")
            await asyncio.sleep(connection.retry_in_s + 0.1)
            before = len(engine.requests)
            await hub.collectors.engine(config.node("gpu-a1"))
            assert len(engine.requests) == before + 1
        finally:
            await hub.stop()
    finally:
        sshd.stop()


async def test_a_node_that_refuses_forwarding_says_so_in_one_line(
    tmp_path: Path, engine: LoopbackServer
) -> None:
    sshd = start_sshd(tmp_path / "sshd", options=["AllowTcpForwarding no"])
    try:
        hub = Hub(config_for(tmp_path, sshd, engine))
        try:
            await engine_polls(hub, 1)
            status = {s.name: s for s in hub.snapshot().sources}["engine:gpu-a1"]
            assert status.last_error is not None and "\n" not in status.last_error
            port = engine.url.rsplit(":", 1)[1]
            assert status.last_error.startswith(
                f"gpu-a1: forward to 127.0.0.1:{port} refused by the node:"
            )
            assert "AllowTcpForwarding" in status.last_error
            assert engine.requests == []
        finally:
            await hub.stop()
    finally:
        sshd.stop()
