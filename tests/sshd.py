"""Real OpenSSH ``sshd`` daemons on 127.0.0.1 for tests, with a fake ``nvidia-smi`` on their PATH.

The fake prints the real H100 capture from fixtures/gpu, so the SSH and GPU backends are
tested against the same daemon and the same bytes a real node gives. A test may start several
(a jump host and the nodes behind it), each with its own host key, port and folder, and add
sshd_config lines of its own (``MaxSessions 2``, ``LogLevel DEBUG1``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import psutil

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def sshd_available() -> bool:
    return Path(SSHD).is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    host_key: asyncssh.SSHKey
    known_hosts: Path
    client_key: Path
    user: str
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def known_hosts_line(self) -> str:
        """This daemon's host key as a known_hosts line (``[127.0.0.1]:PORT ssh-ed25519 ...``)."""
        return f"[127.0.0.1]:{self.port} {_public(self.host_key)}"

    @property
    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def fake_nvidia_smi(self, script: str) -> None:
        """Replace the ``nvidia-smi`` on the daemon's PATH with a shell script."""
        fake = self.root / "bin" / "nvidia-smi"
        fake.write_text(script)
        fake.chmod(0o755)

    def authorize(self, key: asyncssh.SSHKey) -> None:
        """Let ``key`` log in too (sshd reads authorized_keys on each login: no restart)."""
        with (self.root / "authorized_keys").open("a") as f:
            f.write(_public(key) + "\n")

    def configure(self, *lines: str) -> None:
        """Add sshd_config lines and restart on the same port."""
        config = self.root / "sshd_config"
        config.write_text(config.read_text() + "".join(line + "\n" for line in lines))
        self.restart()

    def certify_host_key(self, ca_key: Path, principals: str = "127.0.0.1") -> Path:
        """Sign the host key with ``ca_key`` (``ssh-keygen -s -h``) and serve the certificate;
        returns the certificate's path."""
        public = str(self.root / "host_key.pub")
        sign = [SSH_KEYGEN, "-q", "-s", str(ca_key), "-h", "-I", "test-host", "-n", principals]
        subprocess.run([*sign, public], check=True, capture_output=True)
        certificate = self.root / "host_key-cert.pub"
        self.configure(f"HostCertificate {certificate}")
        return certificate

    def sessions(self) -> list[psutil.Process]:
        """The per-connection sshd processes of logged-in connections (one per connection;
        a connection still in its handshake, "sshd: [accepted]", is not counted)."""
        sessions = []
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if self.user in " ".join(child.cmdline()):
                    sessions.append(child)
        return sessions

    def clients(self) -> set[int]:
        """The pids of the processes that hold the client end of a TCP connection to this
        daemon: which process, on 127.0.0.1, made each connection."""
        owners = set()
        for conn in psutil.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == self.port and conn.pid is not None:
                owners.add(conn.pid)
        return owners

    def runs(self, name: str) -> bool:
        """Whether a process called ``name`` runs under the daemon (a command in a session)."""
        for process in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.name() == name:
                    return True
        return False

    def descendants(self) -> set[int]:
        return {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}

    def drop_connections(self) -> int:
        """Kill every per-connection sshd while the listener stays up, as when a NAT or a
        firewall forgets a connection; returns how many were dropped."""
        sessions = psutil.Process(self.process.pid).children()
        for session in sessions:
            with contextlib.suppress(psutil.NoSuchProcess):
                session.kill()
        psutil.wait_procs(sessions, timeout=5)
        return len(sessions)

    def restart(self) -> None:
        """Stop the daemon (dropping every connection) and start it again on the same port
        with the same host key, as when a node reboots."""
        self.stop()
        self.process = _launch(self.root, self.port)

    def kill(self) -> None:
        """SIGKILL the daemon and every session under it, as when a host dies."""
        if self.process.poll() is not None:
            return
        sessions = psutil.Process(self.process.pid).children(recursive=True)
        self.process.kill()
        for session in sessions:
            with contextlib.suppress(psutil.NoSuchProcess):
                session.kill()  # a SIGKILLed process's sockets close as it dies: no wait
        self.process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the daemon and drop every open session, as when a node goes away."""
        if self.process.poll() is not None:
            return
        sessions = psutil.Process(self.process.pid).children(recursive=True)
        self.process.terminate()
        self.process.wait(timeout=10)
        for session in sessions:
            with contextlib.suppress(psutil.NoSuchProcess):
                session.kill()


def start_sshd(
    root: Path,
    fixture_csv: Path | None = None,
    *,
    options: Sequence[str] = (),
    client_key: asyncssh.SSHKey | None = None,
) -> Sshd:
    """Start an sshd in ``root`` on a free port of 127.0.0.1.

    ``options`` are sshd_config lines added to the defaults; ``client_key`` is the key allowed
    to log in (a new one, written to ``root/client_key``, when not given).
    """
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(root / "host_key"))
    host_key.write_public_key(str(root / "host_key.pub"))
    (root / "host_key").chmod(0o600)
    client = client_key or asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(root / "client_key"))
    (root / "client_key").chmod(0o600)
    client.write_public_key(str(root / "authorized_keys"))
    port = free_port()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {_public(host_key)}\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {root / 'host_key'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"PidFile {root / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                f"SetEnv PATH={bin_dir}:/usr/bin:/bin",
                "Subsystem sftp internal-sftp",
                *options,
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    process = _launch(root, port)
    sshd = Sshd(port, host_key, known_hosts, root / "client_key", getpass.getuser(), process, root)
    capture = fixture_csv or Path(__file__).parent / "fixtures/gpu/nvidia-smi-query-load.csv"
    sshd.fake_nvidia_smi(f"#!/bin/sh\nexec cat {capture}\n")
    return sshd


def _public(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...`` without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _launch(root: Path, port: int) -> subprocess.Popen[bytes]:
    """Start sshd with the config in ``root`` and wait until it accepts connections."""
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "sshd.log", "ab"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((root / "sshd.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within 10 s")
