"""One simulated GPU node: its SSH server, vLLM HTTP server, dcgm-exporter, engine service
and GPUs.

Files live under ``WORKDIR/nodes/NAME/``: the SSH host key, and ``root/`` (the SFTP chroot,
holding ``etc/vllm/args.yaml``). A node can go down (both servers close and drop their
connections) and come back on the same ports, its engine restarting as after a reboot.
It must not know about other nodes, traffic or faults other than its own overlays.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import asyncssh

from console.demo.completions import id_sequence
from console.demo.dcgm_exporter import DcgmExporter
from console.demo.engine_args import ARGS_FILE, EngineArgs, render_engine_args
from console.demo.engine_service import EngineService
from console.demo.faults import ActiveFaults
from console.demo.gpu_sim import GpuSim
from console.demo.http_server import HttpServer
from console.demo.keys import ensure_key
from console.demo.shell import NodeShell
from console.demo.ssh_server import SshServer
from console.demo.vllm_api import VllmApi


class DemoNode:
    def __init__(
        self,
        name: str,
        node_dir: Path,
        *,
        gpus: int,
        seed: int,
        rng: random.Random | None,
        boot_s: float,
        client_key: asyncssh.SSHKey,
        default_args: EngineArgs,
        nvml: bool = False,
    ) -> None:
        self.name = name
        self.root = node_dir / "root"
        self.args_path = self.root / ARGS_FILE.lstrip("/")
        self.faults = ActiveFaults()
        self.service = EngineService(name, self.args_path, self.faults, boot_s)
        self.gpus = GpuSim(name, gpus, seed, rng)
        self.host_key = ensure_key(node_dir / "ssh_host_ed25519_key", f"root@{name}")
        self.shell = NodeShell(name, self.root, self.service, self.gpus, nvml=nvml)
        self.ssh = SshServer(self.host_key, client_key, self.root, self.shell.run)
        api = VllmApi(self.service, self.faults, id_sequence(name))
        self.http = HttpServer(api.handle, server_header="uvicorn")
        # dcgm-exporter's /metrics, for a Prometheus to scrape (a real one listens on :9400).
        self.dcgm = HttpServer(DcgmExporter(self.gpus, name).handle, server_header="dcgm-exporter")
        self.default_args = default_args
        self.up = False

    async def start(self) -> None:
        """Boot with the default engine arguments (a fresh demo starts healthy)."""
        self.args_path.parent.mkdir(parents=True, exist_ok=True)
        self.args_path.write_text(render_engine_args(self.default_args))
        self.service.start_now()
        await self._listen()

    async def go_down(self) -> None:
        self.up = False
        self.service.stop()
        await self.ssh.stop()
        await self.http.stop()
        await self.dcgm.stop()

    async def come_up(self) -> None:
        """Listen again on the same ports; the engine boots as after a reboot."""
        await self._listen()
        self.service.restart()

    def restart_engine(self) -> None:
        """Restart vLLM if the node is up; a node that is down boots it when it comes back."""
        if self.up:
            self.service.restart()

    def tick(self, dt_s: float) -> None:
        engine = self.service.engine
        if engine is not None:
            engine.advance(dt_s)
        self.gpus.update(dt_s, engine)

    async def _listen(self) -> None:
        await self.ssh.start(self.ssh.port)
        await self.http.start(self.http.port)
        self.ssh.forward_ports = {self.http.port}  # the engine, for via_ssh
        await self.dcgm.start(self.dcgm.port)
        self.shell.booted_at = time.time()
        self.up = True
