"""One persistent asyncssh connection per node: exec and SFTP, with strict host keys.

The connection is opened on first use and reused by every later command; when it drops, the
next call reconnects (the hub's backoff spaces the attempts). Host keys are always checked
against the configured known_hosts file: an unknown or changed key is refused, and the error
names the fingerprint the server presented so the engineer can verify it out of band.
Knows nothing of the UI.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncssh


class SshError(Exception):
    """A command could not be run on a node; the message is one line naming the host."""


@dataclass(frozen=True)
class SshTarget:
    node: str
    host: str
    port: int
    user: str
    known_hosts: Path
    identity_files: tuple[Path, ...] = ()
    connect_timeout_s: float = 10.0
    keepalive_s: float = 15.0

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class NodeConnection:
    """A lazily opened, reused SSH connection to one node."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._conn = await self._open()
            return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        t = self.target
        if not t.known_hosts.is_file():
            raise SshError(f"{t.node} ({t.address}): known_hosts file {t.known_hosts} not found")
        try:
            return await asyncssh.connect(
                t.host,
                port=t.port,
                username=t.user,
                known_hosts=str(t.known_hosts),
                client_keys=[str(p) for p in t.identity_files] or (),
                connect_timeout=t.connect_timeout_s,
                keepalive_interval=t.keepalive_s,
                config=None,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SshError(await self._host_key_refusal()) from exc
        except asyncssh.PermissionDenied as exc:
            raise SshError(f"{t.node} ({t.address}): authentication refused") from exc
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise SshError(f"{t.node} ({t.address}): cannot connect: {_reason(exc)}") from exc

    async def _host_key_refusal(self) -> str:
        t = self.target
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(t.host, t.port), t.connect_timeout_s
            )
            fingerprint = key.get_fingerprint("sha256") if key else "no key offered"
        except (TimeoutError, OSError, asyncssh.Error):
            fingerprint = "unavailable"
        return (
            f"{t.node} ({t.host}:{t.port}): host key refused: not in {t.known_hosts} or changed"
            f" (server offered {fingerprint})"
        )

    async def run(self, command: str, timeout_s: float = 30.0) -> str:
        """Run ``command`` and return its stdout; raise :class:`SshError` on any failure."""
        conn = await self._connected()
        try:
            result = await asyncio.wait_for(conn.run(command, check=False), timeout_s)
        except TimeoutError as exc:
            self._drop(conn)  # it may be half dead: open a fresh one next time
            raise SshError(
                f"{self.target.node}: `{command}` timed out after {timeout_s:g}s"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            self._drop(conn)
            raise SshError(f"{self.target.node}: `{command}`: {_reason(exc)}") from exc
        if result.exit_status != 0:
            stderr = str(result.stderr or "").strip().splitlines()
            detail = stderr[-1] if stderr else "no output on stderr"
            raise SshError(f"{self.target.node}: `{command}` exited {result.exit_status}: {detail}")
        return str(result.stdout or "")

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Close a connection that failed (its socket and keepalive timer go with it)."""
        conn.close()
        if self._conn is conn:
            self._conn = None

    async def read_file(self, path: str) -> bytes:
        conn = await self._connected()
        try:
            async with conn.start_sftp_client() as sftp, sftp.open(path, "rb") as f:
                return await f.read()
        except (OSError, asyncssh.Error) as exc:
            raise SshError(f"{self.target.node}: sftp read {path}: {_reason(exc)}") from exc

    async def write_file(self, path: str, data: bytes) -> None:
        conn = await self._connected()
        try:
            async with conn.start_sftp_client() as sftp, sftp.open(path, "wb") as f:
                await f.write(data)
        except (OSError, asyncssh.Error) as exc:
            raise SshError(f"{self.target.node}: sftp write {path}: {_reason(exc)}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return text[0] if text else type(exc).__name__
