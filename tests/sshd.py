"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests, with a fake ``nvidia-smi`` on its PATH.

The fake prints the real H100 capture from fixtures/gpu, so the SSH and GPU backends are
tested against the same daemon and the same bytes a real node gives.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import psutil

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


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

    def fake_nvidia_smi(self, script: str) -> None:
        """Replace the ``nvidia-smi`` on the daemon's PATH with a shell script."""
        fake = self.root / "bin" / "nvidia-smi"
        fake.write_text(script)
        fake.chmod(0o755)

    def sessions(self) -> list[psutil.Process]:
        """The per-connection sshd processes of logged-in connections (one per connection;
        a connection still in its handshake, "sshd: [accepted]", is not counted)."""
        sessions = []
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if self.user in " ".join(child.cmdline()):
                    sessions.append(child)
        return sessions

    def runs(self, name: str) -> bool:
        """Whether a process called ``name`` runs under the daemon (a command in a session)."""
        for process in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.name() == name:
                    return True
        return False

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


def start_sshd(root: Path, fixture_csv: Path) -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(root / "host_key"))
    (root / "host_key").chmod(0o600)
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(root / "client_key"))
    (root / "client_key").chmod(0o600)
    client.write_public_key(str(root / "authorized_keys"))
    port = free_port()
    known_hosts = root / "known_hosts"
    known_hosts.write_bytes(f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key("openssh"))
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
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    process = _launch(root, port)
    sshd = Sshd(port, host_key, known_hosts, root / "client_key", getpass.getuser(), process, root)
    sshd.fake_nvidia_smi(f"#!/bin/sh\nexec cat {fixture_csv}\n")
    return sshd


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
