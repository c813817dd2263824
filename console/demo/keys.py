"""SSH keys for the demo fleet: per-node host keys, the operator's client key, known_hosts.

Keys are generated once and kept in the work directory, so a restarted demo keeps its
identities and an existing known_hosts stays valid. Nothing here listens or connects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import asyncssh


def ensure_key(path: Path, comment: str) -> asyncssh.SSHKey:
    """Load the ed25519 key at ``path``, or generate it (private 0600, ``.pub`` beside it)."""
    if path.exists():
        return asyncssh.read_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    # Create with 0600 from the start: OpenSSH refuses private keys others can read.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key


def public_key_text(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...`` without the comment."""
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob}"


def write_known_hosts(path: Path, hosts: Iterable[tuple[str, int, asyncssh.SSHKey]]) -> None:
    """One ``[HOST]:PORT ssh-ed25519 AAAA...`` line per (host, port, host key)."""
    lines = [f"[{host}]:{port} {public_key_text(key)}" for host, port, key in hosts]
    path.write_text("\n".join(lines) + "\n")
