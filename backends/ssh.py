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
and the command or path. Commands run whole (:meth:`NodeConnection.run`) or streamed line by
line (:meth:`NodeConnection.stream`); files are read, written, listed, and replaced atomically
(:meth:`NodeConnection.replace_file`) over SFTP. Routers are reached the same way: a pool's
targets are named hosts, whether GPU nodes or gateways. Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import asyncssh

_T = TypeVar("_T")

_SFTP_CONNECTION_GONE = (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)

# OpenSSH refuses sessions past MaxSessions (10 by default) on one connection.
MAX_SESSIONS_PER_NODE = 8
# Where replace_file() writes before renaming over the file; never a name a backup takes.
TEMP_SUFFIX = ".llmops-tmp"


class SshError(Exception):
    """Something could not be done on a node; the message is one line naming the node."""


class CommandTimedOut(SshError):
    """A command or transfer ran past its time; what a streamed command printed until then is
    kept in ``stdout`` and ``stderr``."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


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
                    raise CommandTimedOut(
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

    async def stream(
        self, command: str, on_line: Callable[[str], None], timeout_s: float = 60.0
    ) -> tuple[int, str, str]:
        """Run ``command``, handing each line of its stdout and stderr to ``on_line`` as it
        arrives (without its line ending); returns the exit status, stdout and stderr.

        Unlike :meth:`run`, a non-zero exit is returned, not raised: the caller reports it.
        Past ``timeout_s`` the command is sent SIGKILL and its channel closed, and
        :class:`CommandTimedOut` carries what it printed until then. Raises :class:`SshError`
        when it could not run to its end otherwise.
        """
        stdout: list[str] = []
        stderr: list[str] = []

        async def pump(reader: asyncssh.SSHReader[str], into: list[str]) -> None:
            async for line in reader:
                if not line:  # asyncssh yields "" at end of stream; a blank line is "\n"
                    break
                into.append(line)
                on_line(line.rstrip("\r\n"))

        async def use(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
            # errors="replace": one stray byte of a binary file must not end the stream.
            process = await conn.create_process(command, errors="replace")
            try:
                await asyncio.gather(pump(process.stdout, stdout), pump(process.stderr, stderr))
                result = await process.wait()
            finally:
                if process.exit_status is None and process.exit_signal is None:
                    # Closing the channel alone leaves a quiet command (sleep) running on
                    # OpenSSH: signal it first (OpenSSH >= 7.9 honours signal requests).
                    with contextlib.suppress(OSError, asyncssh.Error):
                        process.send_signal("KILL")
                process.close()
            if result.exit_status is None and conn.is_closed():
                raise asyncssh.ConnectionLost("connection lost")
            return result

        try:
            result = await self._on_connection(f"`{command}`", timeout_s, use)
        except CommandTimedOut as exc:
            raise CommandTimedOut(str(exc), "".join(stdout), "".join(stderr)) from exc
        if result.exit_signal:
            raise SshError(
                f"{self.target.node}: `{command}` killed by signal {result.exit_signal[0]}"
            )
        if result.exit_status is None:
            raise SshError(f"{self.target.node}: `{command}` ended without an exit status")
        return result.exit_status, "".join(stdout), "".join(stderr)

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

    async def replace_file(
        self, path: str, data: bytes, timeout_s: float = 30.0, *, mode_of: str | None = None
    ) -> None:
        """Write ``data`` to ``path`` so that a reader, or a crash, never meets half a file:
        the bytes go to ``PATH.llmops-tmp``, which then takes the permission bits of
        ``mode_of`` (default: ``path`` itself, when it exists) and is renamed over ``path``
        with the posix-rename@openssh.com extension (an atomic rename(2) on the node).
        The owner is not kept: SFTP may not change it.
        """
        temp = path + TEMP_SUFFIX

        async def use(conn: asyncssh.SSHClientConnection) -> None:
            async with conn.start_sftp_client() as sftp:
                try:
                    mode = (await sftp.stat(mode_of or path)).permissions
                except asyncssh.SFTPNoSuchFile:
                    mode = None
                try:
                    async with sftp.open(temp, "wb") as f:
                        await f.write(data)
                    if mode is not None:
                        await sftp.chmod(temp, mode & 0o7777)
                    await sftp.posix_rename(temp, path)
                except (OSError, asyncssh.Error):
                    # Not on a timeout: a dead connection would hang the clean-up. A temp file
                    # left behind is only overwritten by the next replace.
                    with contextlib.suppress(OSError, asyncssh.Error):
                        await sftp.remove(temp)
                    raise

        await self._on_connection(f"sftp replace {path}", timeout_s, use)

    async def listdir(self, folder: str, timeout_s: float = 30.0) -> list[str]:
        """The names in ``folder`` (without ``.`` and ``..``)."""

        async def use(conn: asyncssh.SSHClientConnection) -> list[str]:
            async with conn.start_sftp_client() as sftp:
                names = await sftp.listdir(folder)
            return [str(n) for n in names if n not in (".", "..")]

        return await self._on_connection(f"sftp list {folder}", timeout_s, use)

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

    async def stream(
        self, node: str, command: str, on_line: Callable[[str], None], timeout_s: float = 60.0
    ) -> tuple[int, str, str]:
        """See :meth:`NodeConnection.stream`."""
        return await self.connection(node).stream(command, on_line, timeout_s)

    async def replace_file(
        self,
        node: str,
        path: str,
        data: bytes,
        timeout_s: float = 30.0,
        *,
        mode_of: str | None = None,
    ) -> None:
        """See :meth:`NodeConnection.replace_file`."""
        await self.connection(node).replace_file(path, data, timeout_s, mode_of=mode_of)

    async def listdir(self, node: str, folder: str, timeout_s: float = 30.0) -> list[str]:
        return await self.connection(node).listdir(folder, timeout_s)

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
