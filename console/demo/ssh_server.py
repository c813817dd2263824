"""One simulated node's SSH server: asyncssh on 127.0.0.1, public-key auth, exec and SFTP.

Only user ``llmops`` with the demo's client key gets in. ``exec`` requests go to a command
runner (:mod:`console.demo.shell`); a command that follows (``journalctl -f``) writes until the
client closes the channel. SFTP (and scp) are chrooted to the node's root directory so clients
see real-looking paths like ``/etc/vllm/args.yaml``, and end with exit status 0 as OpenSSH's
sftp-server does. The server can stop, dropping its connections, and start again on the same
port. It must not decide what commands print.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncssh

from console.demo.http_server import HOST
from console.demo.shell import CommandResult

USER = "llmops"


class _Auth(asyncssh.SSHServer):
    """Per-connection callbacks: public key only, one user, connection tracked for stop()."""

    def __init__(self, owner: SshServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always demand authentication

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        authorized = self._owner.authorized_key.public_data
        return username == USER and key.public_data == authorized

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        """A local port forward (``engine: {via_ssh: true}``): only to the node's own engine
        on its localhost, as an sshd with PermitOpen localhost:PORT allows."""
        return dest_host in ("127.0.0.1", "localhost") and dest_port in self._owner.forward_ports


class _SftpServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server, plus the exit status OpenSSH's sftp-server gives its channel.

    asyncssh closes an SFTP subsystem channel without an exit status, so OpenSSH's ``scp``
    (SFTP mode, its default since 9.0) and ``sftp -b`` report failure after a good transfer.
    Legacy ``scp -O`` runs through asyncssh's SCP server, which sends its own status.
    """

    def exit(self) -> None:
        super().exit()
        if self.channel.get_subsystem() == "sftp":
            self.channel.exit(0)


class SshServer:
    def __init__(
        self,
        host_key: asyncssh.SSHKey,
        authorized_key: asyncssh.SSHKey,
        sftp_root: Path,
        run_command: Callable[[str], CommandResult],
    ) -> None:
        self.host_key = host_key
        self.authorized_key = authorized_key
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._sftp_root = sftp_root
        self._run_command = run_command
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.port = 0
        self.forward_ports: set[int] = set()  # what a client may forward to on this node

    async def start(self, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one); returns the port."""
        self._acceptor = await asyncssh.listen(
            HOST,
            port,
            server_host_keys=[self.host_key],
            server_factory=lambda: _Auth(self),
            process_factory=self._process,
            sftp_factory=lambda chan: _SftpServer(chan, chroot=bytes(self._sftp_root)),
            allow_scp=True,
        )
        self.port = self._acceptor.get_port()
        return self.port

    async def stop(self) -> None:
        """Stop listening and abort every open connection, as a dead host would."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        connections, self.connections = self.connections, set()
        for conn in connections:
            conn.abort()
        if acceptor is not None:
            await acceptor.wait_closed()  # after the aborts: Python 3.12+ waits for connections

    async def _process(self, process: asyncssh.SSHServerProcess) -> None:
        if process.command is None:
            process.stderr.write("This node runs commands only: ssh HOST COMMAND\n")
            process.exit(1)
            return
        result = self._run_command(process.command)
        process.stdout.write(result.stdout)
        process.stderr.write(result.stderr)
        if result.follow is not None:
            await _follow(process, result.follow())
        if not process.is_closing():
            process.exit(result.exit_status)


async def _follow(process: asyncssh.SSHServerProcess, lines: AsyncIterator[str]) -> None:
    """Write ``lines`` until the client sends EOF or closes the channel (``journalctl -f``)."""

    async def copy() -> None:
        async for line in lines:
            process.stdout.write(line)

    writer = asyncio.ensure_future(copy())
    closed = asyncio.ensure_future(process.stdin.read())  # returns at EOF or channel close
    try:
        await asyncio.wait((writer, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, closed):
            task.cancel()
        await asyncio.gather(writer, closed, return_exceptions=True)
