"""The gateway host ``gw-1``: its SSH server, the ``llm-router`` unit, and the router's HTTP port.

Files live under ``WORKDIR/gateway/NAME/``: the SSH host key, and ``root/`` (the SFTP chroot,
holding ``etc/llm-router/config.yaml``). Writing the file changes nothing by itself: only
``systemctl reload llm-router`` (or a restart) makes the router read it. A reload that finds
the file broken fails with the reason, on stderr and in the unit's journal, and the router
keeps routing by what it loaded before (as nginx and envoy do); a restart that finds it broken
leaves the unit failed and the router down until a good file is started. The gateway has no
GPU and no engine: it is no node of the console's config, only its router.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from console.demo.http_server import HttpServer
from console.demo.journal import Journal
from console.demo.keys import ensure_key
from console.demo.router import Router
from console.demo.router_config import (
    ROUTER_FILE,
    ROUTER_UNIT,
    RouterConfigError,
    RouterTable,
    Upstream,
    parse_router_config,
    render_router_config,
)
from console.demo.shell import NOT_ACTIVE, CommandResult, Program, Shell
from console.demo.ssh_server import SshServer

GATEWAY = "gw-1"
_DESCRIPTION = "LLM router (LiteLLM proxy)"
_EXEC = f"/usr/local/bin/litellm --config {ROUTER_FILE} --port 4000"


class RouterService:
    """``llm-router.service`` as systemd sees it: active or failed, its PID and journal."""

    def __init__(self, host: str, config_path: Path, router: Router) -> None:
        self.config_path = config_path
        self.router = router
        self.journal = Journal(host)
        self.state = "inactive"  # active | failed | inactive
        self.since = time.time()
        self.pid = 2100

    def restart(self) -> str | None:
        """Stop the router and start it on the file as it is; the reason when that fails."""
        if self.state == "active":
            self._systemd(f"Stopping {ROUTER_UNIT} - {_DESCRIPTION}...")
            self._systemd(f"{ROUTER_UNIT}: Deactivated successfully.")
            self._systemd(f"Stopped {ROUTER_UNIT} - {_DESCRIPTION}.")
        self.router.load(None)
        self.pid += 1
        self._systemd(f"Starting {ROUTER_UNIT} - {_DESCRIPTION}...")
        table, problem = self._read()
        if table is None:
            self._log(f"ERROR: {ROUTER_FILE}: {problem}")
            self._systemd(f"{ROUTER_UNIT}: Main process exited, code=exited, status=1/FAILURE")
            self._systemd(f"{ROUTER_UNIT}: Failed with result 'exit-code'.")
            self._systemd(f"Failed to start {ROUTER_UNIT} - {_DESCRIPTION}.")
            self._set_state("failed")
            return problem
        self._loaded(table)
        self._systemd(f"Started {ROUTER_UNIT} - {_DESCRIPTION}.")
        self._set_state("active")
        return None

    def reload(self) -> str | None:
        """Re-read the file; a broken one changes nothing. The reason when it fails."""
        if self.state != "active":
            return f"{ROUTER_UNIT} is not active, cannot reload."
        self._systemd(f"Reloading {ROUTER_UNIT} - {_DESCRIPTION}...")
        table, problem = self._read()
        if table is None:
            self._log(f"ERROR: {ROUTER_FILE}: {problem}; keeping the routes loaded before")
            self._systemd(f"{ROUTER_UNIT}: Control process exited, code=exited, status=1/FAILURE")
            self._systemd(f"Reload failed for {ROUTER_UNIT} - {_DESCRIPTION}.")
            return f"llm-router: {ROUTER_FILE}: {problem}"
        self._loaded(table)
        self._systemd(f"Reloaded {ROUTER_UNIT} - {_DESCRIPTION}.")
        return None

    def _read(self) -> tuple[RouterTable | None, str]:
        try:
            return parse_router_config(self.config_path.read_text()), ""
        except OSError as exc:
            return None, f"cannot read: {exc.strerror}"
        except RouterConfigError as exc:
            return None, str(exc)

    def _loaded(self, table: RouterTable) -> None:
        self.router.load(table)
        routes = ", ".join(table.routes)
        self._log(f"INFO: loaded {table.deployments} deployments for routes {routes}")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def _systemd(self, message: str) -> None:
        self.journal.log("systemd[1]", message)

    def _log(self, message: str) -> None:
        self.journal.log(f"llm-router[{self.pid}]", message)


class GatewayShell(Shell):
    """The gateway's commands: ``systemctl reload|restart|status|is-active llm-router``, and
    what every demo host answers (``journalctl -u llm-router``, ``cat``, ``uptime``, ...)."""

    def __init__(self, name: str, root: Path, service: RouterService) -> None:
        super().__init__(name, root, ROUTER_UNIT, service.journal)
        self._service = service

    def _programs(self) -> dict[str, Program]:
        return {**super()._programs(), "systemctl": self._systemctl}

    systemctl_verbs = ("reload", "restart", "is-active", "status")

    def _unit_state(self) -> str:
        return self._service.state

    def _unit_verb(self, verb: str) -> CommandResult:
        service = self._service
        problem = service.reload() if verb == "reload" else service.restart()
        if problem is None:
            return CommandResult()
        if service.state != "active" and verb == "reload":
            return CommandResult(stderr=problem + "\n", exit_status=1)
        return CommandResult(
            stderr=(
                f"{problem}\n"
                f"Job for {ROUTER_UNIT} failed because the control process exited with error "
                f'code.\nSee "systemctl status {ROUTER_UNIT}" and "journalctl -xeu {ROUTER_UNIT}" '
                "for details.\n"
            ),
            exit_status=1,
        )

    def _status(self) -> CommandResult:
        service = self._service
        active = service.state == "active"
        state = {
            "active": "active (running)",
            "failed": "failed (Result: exit-code)",
            "inactive": "inactive (dead)",
        }[service.state]
        text = self.unit_status(
            "●" if active else "×" if service.state == "failed" else "○",
            state,
            service.since,
            f"{service.pid} {_EXEC}" if active else None,
            _DESCRIPTION,
        )
        return CommandResult(stdout=text, exit_status=0 if active else NOT_ACTIVE)


class Gateway:
    def __init__(
        self,
        name: str,
        gateway_dir: Path,
        *,
        rng: random.Random | None,
        client_key: asyncssh.SSHKey,
        upstreams: Sequence[Upstream],
    ) -> None:
        self.name = name
        self.root = gateway_dir / "root"
        self.config_path = self.root / ROUTER_FILE.lstrip("/")
        self.router = Router(rng)
        self.service = RouterService(name, self.config_path, self.router)
        self.host_key = ensure_key(gateway_dir / "ssh_host_ed25519_key", f"root@{name}")
        self.shell = GatewayShell(name, self.root, self.service)
        self.ssh = SshServer(self.host_key, client_key, self.root, self.shell.run)
        self.http = HttpServer(self.router.handle, server_header="uvicorn")
        self._upstreams = tuple(upstreams)

    async def start(self) -> None:
        """Write the first router config, start the router on it and listen."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_router_config(self._upstreams))
        problem = self.service.restart()
        if problem is not None:
            raise RuntimeError(f"the demo's own router config is broken: {problem}")
        await self.router.open()
        await self.ssh.start()
        await self.http.start()
        self.shell.booted_at = time.time()

    async def stop(self) -> None:
        await self.ssh.stop()
        await self.http.stop()
        await self.router.close()
