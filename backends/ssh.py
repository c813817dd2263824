"""SSH to the fleet: one pool that owns one persistent asyncssh connection per node.

:class:`SshPool` is the only owner of SSH connections: the hub's collectors and the runbook
engine share it, so a node sees one connection from the console, not one per caller. Each
:class:`NodeConnection` is opened on first use and reused by every later command and SFTP
transfer. A connection found dead when a channel is opened is replaced at once and the call
retried once (nothing ran on the node: the channel never opened); a connection that drops
while a command runs fails that command, and the next call reconnects (the hub's backoff
spaces the attempts). Host keys are always checked against the configured known_hosts file:
an unknown or changed key is refused, and the error names the fingerprint the server
presented so the engineer can verify it out of band. Every error is one line naming the node
and the command or path. Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import asyncssh

_T = TypeVar("_T")

_SFTP_CONNECTION_GONE = (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)

# OpenSSH refuses sessions past MaxSessions (10 by default) on one connection.
MAX_SESSIONS_PER_NODE = 8


class SshError(Exception):
    """Something could not be done on a node; the message is one line naming the node."""


class CommandFailed(SshError):
    """A command ran to its end and exited non-zero: what it printed is kept for the caller.

    Callers that must tell the tool's own refusals from other failures (nvidia-smi's "not a
    valid field" answer, for one) read ``exit_status``, ``stdout`` and ``stderr``.
    """

    def __init__(self, node: str, command: str, exit_status: int, stdout: str, stderr: str) -> None:
        self.node = node
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{node}: `{command}` exited {exit_status}: {_detail(stdout, stderr)}")


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
        self._sessions = asyncio.Semaphore(MAX_SESSIONS_PER_NODE)
        self._in_flight = 0

    async def _connected(self) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The live connection, and whether it was opened by this call."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn, False
            self._conn = await self._open()
            return self._conn, True

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

    async def _on_connection(
        self,
        what: str,
        timeout_s: float,
        use: Callable[[asyncssh.SSHClientConnection], Awaitable[_T]],
    ) -> _T:
        """Run ``use`` on the live connection; ``what`` names the work in errors.

        A reused connection that turns out dead when the channel opens is replaced and ``use``
        retried once: a channel that never opened ran nothing, so the retry is safe even for
        commands that change the node.
        """
        async with self._sessions:
            for attempt in (1, 2):
                conn, fresh = await self._connected()
                self._in_flight += 1
                try:
                    return await asyncio.wait_for(use(conn), timeout_s)
                except asyncssh.ChannelOpenError as exc:
                    if exc.code != asyncssh.OPEN_CONNECT_FAILED:  # refused, e.g. MaxSessions
                        raise SshError(f"{self.target.node}: {what}: {_reason(exc)}") from exc
                    self._drop(conn)
                    if fresh or attempt == 2:
                        raise SshError(f"{self.target.node}: {what}: {_reason(exc)}") from exc
                except asyncssh.SFTPError as exc:
                    # A refused file operation (no such file, permission) leaves the
                    # connection good; only a lost one is replaced.
                    if conn.is_closed() or isinstance(exc, _SFTP_CONNECTION_GONE):
                        self._drop(conn)
                    raise SshError(f"{self.target.node}: {what}: {_reason(exc)}") from exc
                except TimeoutError as exc:
                    # Alone on the connection, it may be half dead: open a fresh one next
                    # time. Shared, the others' commands are kept (they may be changing the
                    # node) and keepalive judges the connection.
                    if self._in_flight == 1:
                        self._drop(conn)
                    raise SshError(
                        f"{self.target.node}: {what} timed out after {timeout_s:g}s"
                    ) from exc
                except (OSError, asyncssh.Error) as exc:
                    self._drop(conn)
                    raise SshError(f"{self.target.node}: {what}: {_reason(exc)}") from exc
                finally:
                    self._in_flight -= 1
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def run(self, command: str, timeout_s: float = 30.0) -> str:
        """Run ``command`` and return its stdout.

        Raises :class:`CommandFailed` when it exits non-zero (with what it printed) and
        :class:`SshError` when it could not run to its end (no connection, timeout, the
        connection dropped).
        """

        async def use(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
            process = await conn.create_process(command)
            try:
                result = await process.wait()
            finally:
                process.close()  # on a timeout too: the channel goes, the connection stays
            if result.exit_status is None and conn.is_closed():
                raise asyncssh.ConnectionLost("connection lost")  # it closed under the command
            return result

        result = await self._on_connection(f"`{command}`", timeout_s, use)
        stdout, stderr = str(result.stdout or ""), str(result.stderr or "")
        if result.exit_signal:
            raise SshError(
                f"{self.target.node}: `{command}` killed by signal {result.exit_signal[0]}"
            )
        if result.exit_status is None:
            raise SshError(f"{self.target.node}: `{command}` ended without an exit status")
        if result.exit_status != 0:
            raise CommandFailed(self.target.node, command, result.exit_status, stdout, stderr)
        return stdout

    async def read_file(self, path: str, timeout_s: float = 30.0) -> bytes:
        async def use(conn: asyncssh.SSHClientConnection) -> bytes:
            async with conn.start_sftp_client() as sftp, sftp.open(path, "rb") as f:
                return cast(bytes, await f.read())  # "rb": bytes

        return await self._on_connection(f"sftp read {path}", timeout_s, use)

    async def write_file(self, path: str, data: bytes, timeout_s: float = 30.0) -> None:
        async def use(conn: asyncssh.SSHClientConnection) -> None:
            async with conn.start_sftp_client() as sftp, sftp.open(path, "wb") as f:
                await f.write(data)

        await self._on_connection(f"sftp write {path}", timeout_s, use)

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Close a connection that failed (its socket and keepalive timer go with it)."""
        conn.close()
        if self._conn is conn:
            self._conn = None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection; a peer that never answers the close is cut off after
        ``timeout_s`` so that shutdown never hangs on one dead node."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        try:
            await asyncio.wait_for(conn.wait_closed(), timeout_s)
        except TimeoutError:
            conn.abort()


class SshPool:
    """One :class:`NodeConnection` per configured node, shared by everyone who needs SSH."""

    def __init__(self, targets: Iterable[SshTarget]) -> None:
        self._nodes: dict[str, NodeConnection] = {}
        for target in targets:
            if target.node in self._nodes:
                raise ValueError(f"node {target.node} is listed twice")
            self._nodes[target.node] = NodeConnection(target)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def connection(self, node: str) -> NodeConnection:
        try:
            return self._nodes[node]
        except KeyError:
            raise SshError(f"{node}: not a configured node") from None

    async def run(self, node: str, command: str, timeout_s: float = 30.0) -> str:
        """See :meth:`NodeConnection.run`."""
        return await self.connection(node).run(command, timeout_s)

    def runner(self, node: str) -> Callable[[str], Awaitable[str]]:
        """``run`` bound to one node, for readers that take a command runner."""
        return self.connection(node).run

    async def read_file(self, node: str, path: str, timeout_s: float = 30.0) -> bytes:
        return await self.connection(node).read_file(path, timeout_s)

    async def write_file(self, node: str, path: str, data: bytes, timeout_s: float = 30.0) -> None:
        await self.connection(node).write_file(path, data, timeout_s)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close every connection at once, each bounded by ``timeout_s``."""
        await asyncio.gather(*(c.close(timeout_s) for c in self._nodes.values()))


def _detail(stdout: str, stderr: str) -> str:
    """The line that says why a command failed: stderr's last, else stdout's first."""
    err = [line.strip() for line in stderr.splitlines() if line.strip()]
    if err:
        return err[-1]
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    return out[0] if out else "no output"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
