"""SSH to the fleet: one pool that owns one persistent asyncssh connection per node.

:class:`SshPool` is the only owner of SSH connections: the hub's collectors and the runbook
engine share it, so a node sees one connection from the console, not one per caller. Each
:class:`NodeConnection` is opened on first use and reused by every later command and SFTP
transfer; nodes behind a jump host (ProxyJump, chains too) reach it through ONE shared
:class:`JumpConnection` per jump host.

Where to connect is read, on each (re)connection, from the OpenSSH client config
(``ssh.config``, by asyncssh's own parser): a node's host may be a Host alias, and HostName,
User, Port, IdentityFile, IdentitiesOnly, IdentityAgent, ProxyJump, ServerAliveInterval,
ConnectTimeout, UserKnownHostsFile and Include are honoured. What the llmops config sets
explicitly (:class:`SshTarget`'s fields other than ``None``) wins over it. Keys come from the
agent and from identity files; an encrypted key file is used only through the agent (it is
never decrypted here, and nothing ever prompts).

A connection found dead when a channel is opened is replaced at once and the call retried
once (nothing ran on the node: the channel never opened); a connection that drops while a
command runs fails that command, and the next call reconnects. Failed connection attempts are
spaced by exponential backoff with jitter: callers waiting together share one attempt, and a
call before the next attempt is due fails at once with the last error (so a node or jump
host that is down is never hammered, nor a poll held up). A
connection carries at most :data:`MAX_SESSIONS_PER_NODE` channels at once and fewer when the
node refuses more (its MaxSessions is learned): commands over the cap queue. A timed-out
command is killed and its channel closed; the connection is kept when the command ended.

Host keys are always checked against known_hosts (the node's and every jump host's): an
unknown, changed or revoked key is refused, and the error names the fingerprint the server
offered and the known_hosts line to add or review, so the engineer can verify it out of band.
Hashed entries, ``@cert-authority`` and ``@revoked`` lines are read as OpenSSH reads them.
Nothing here ever trusts or stores a host key: :func:`scan_host_keys` only reports them.

Every error is one line naming the node and the command or path. Commands run whole
(:meth:`NodeConnection.run`) or streamed line by line (:meth:`NodeConnection.stream`); files
are read, written, listed, and replaced atomically (:meth:`NodeConnection.replace_file`) over
SFTP. Routers are reached the same way: a pool's targets are named hosts, whether GPU nodes or
gateways. Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import getpass
import hashlib
import hmac
import ipaddress
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncssh
from asyncssh.config import SSHClientConfig

from backends.remote_errors import CommandFailed, CommandTimedOut, SshError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_SFTP_CONNECTION_GONE = (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)

# OpenSSH refuses sessions past MaxSessions (10 by default) on one connection; a node set
# lower is learned from its refusals.
MAX_SESSIONS_PER_NODE = 8
# Where replace_file() writes before renaming over the file; never a name a backup takes.
TEMP_SUFFIX = ".llmops-tmp"
# The remote user on a node when neither the llmops config nor ssh_config names one.
DEFAULT_USER = "llmops"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_KEEPALIVE_S = 15.0
# Failed connection attempts: the first retry after about this long, doubling up to the cap.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0
# A timed-out command whose channel the node closes within this long has ended; one that
# does not (signals are ignored on root logins, or the connection is dead) ends with the
# connection when it is alone on it.
ENDED_S = 1.0
# A session refused this many times in a row by a node with none of ours open: give up.
MAX_REFUSALS = 20
# ProxyJump inside ProxyJump (a jump host's own jump host) deeper than this is a loop.
MAX_JUMP_DEPTH = 8
# OpenSSH's defaults when ssh_config names no IdentityFile / UserKnownHostsFile.
DEFAULT_IDENTITY_FILES = (
    "~/.ssh/id_rsa",
    "~/.ssh/id_ecdsa",
    "~/.ssh/id_ecdsa_sk",
    "~/.ssh/id_ed25519",
    "~/.ssh/id_ed25519_sk",
    "~/.ssh/id_dsa",
)
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# One handshake per host key type, as ssh-keyscan does (a server has at most one of each).
SCAN_ALGORITHMS = (
    ("ssh-ed25519",),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
    ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
)


# --- where to connect ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """How the llmops config says to reach one node (or a router's host).

    ``host`` is an address or a Host alias of ``ssh_config``. Every other field left ``None``
    is read from ``ssh_config`` for that host, then from OpenSSH's (or the console's)
    defaults; a field that is set wins over ssh_config. ``known_hosts``, ``identity_files``,
    ``connect_timeout_s`` and ``keepalive_s`` apply to the jump hosts too (the console's one
    trust store and keys); ``port`` and ``user`` are the node's only. ``jump`` is a ProxyJump
    value (``[user@]host[:port]``, comma-separated for a chain; ``none`` for a direct
    connection) used instead of ssh_config's.
    """

    node: str
    host: str
    port: int | None = None
    user: str | None = None
    known_hosts: Path | None = None
    identity_files: tuple[Path, ...] | None = None
    connect_timeout_s: float | None = None
    keepalive_s: float | None = None
    ssh_config: Path | None = None
    jump: str | None = None


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way to a node, or the node itself, as resolved from the configs."""

    name: str  # as written: the node's host or a ProxyJump entry (an alias, or an address)
    host: str  # HostName
    port: int
    user: str
    known_hosts: tuple[Path, ...]  # read in order; the first is where a new line belongs
    identity_files: tuple[Path, ...]
    identity_files_named: bool  # named in a config (not OpenSSH's defaults): say when missing
    identities_only: bool
    agent: str | None  # the agent's socket; None: no agent
    connect_timeout_s: float
    keepalive_s: float
    host_key_alias: str | None
    config: Path | None  # the ssh_config the hop was read from (asyncssh reads the rest)
    ciphers_set: bool = False  # ssh_config names its Ciphers: those, in its order

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``host`` on port 22, else ``[host]:port``."""
        name = self.host_key_alias or self.host
        return name if self.port == 22 else f"[{name}]:{self.port}"


@dataclass(frozen=True)
class Route:
    """The node and the jump hosts before it, outermost first."""

    node: Hop
    jumps: tuple[Hop, ...] = ()


def resolve(target: SshTarget) -> Route:
    """Where and how to connect for ``target``: its ssh_config read for the node and for each
    jump host. Raises :class:`SshError` (one line naming the node) for an ssh_config that does
    not parse, a ProxyJump loop, or ``UserKnownHostsFile none``."""
    config = target.ssh_config if target.ssh_config and target.ssh_config.is_file() else None
    try:
        options = _ssh_config(config, target.host, target.user, target.port)
        node = _hop(target, config, options, target.host, target.user, target.port, True)
        spec = target.jump if target.jump is not None else options.get("ProxyJump")
        jumps = _jump_chain(target, config, cast(str | None, spec), 0)
    except (ValueError, OSError) as exc:  # asyncssh's ConfigParseError is a ValueError
        raise SshError(f"{target.node}: ssh config: {_reason(exc)}") from exc
    return Route(node, jumps)


def _ssh_config(config: Path | None, host: str, user: str | None, port: int | None) -> Any:
    """ssh_config's options for ``host`` (asyncssh's parser: Host, Match, Include, tokens)."""
    return SSHClientConfig.load(
        None,
        [config] if config else None,
        False,
        False,
        False,
        getpass.getuser(),
        () if user is None else user,
        host,
        () if port is None else port,
    )


def _jump_chain(
    target: SshTarget, config: Path | None, spec: str | None, depth: int
) -> tuple[Hop, ...]:
    """The hops of a ProxyJump value; the first one's own ProxyJump applies, as in OpenSSH."""
    if not spec or spec.strip().lower() == "none":
        return ()
    if depth >= MAX_JUMP_DEPTH:
        raise ValueError(f"ProxyJump nests deeper than {MAX_JUMP_DEPTH} hosts (a loop?)")
    hops: list[Hop] = []
    for i, entry in enumerate(spec.split(",")):
        user, host, port = _jump_entry(entry.strip())
        options = _ssh_config(config, host, user, port)
        if i == 0:
            own = cast(str | None, options.get("ProxyJump"))
            hops.extend(_jump_chain(target, config, own, depth + 1))
        hops.append(_hop(target, config, options, host, user, port, False))
    return tuple(hops)


def _jump_entry(entry: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``ssh://[user@]host[:port]``; ``[v6]:port``)."""
    entry = entry.removeprefix("ssh://")
    user, _, host = entry.rpartition("@")
    port: str | None = None
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or (port is not None and not port.isdigit()):
        raise ValueError(f"ProxyJump entry {entry!r} is not [user@]host[:port]")
    return user or None, host, int(port) if port else None


def _hop(
    target: SshTarget,
    config: Path | None,
    options: Any,
    name: str,
    user: str | None,
    port: int | None,
    is_node: bool,
) -> Hop:
    def option(key: str, default: object = None) -> Any:
        return options.get(key, default)

    if target.known_hosts is not None:
        known_hosts: tuple[Path, ...] = (target.known_hosts,)
    else:
        user_files = option("UserKnownHostsFile", list(DEFAULT_USER_KNOWN_HOSTS))
        if not user_files:
            raise ValueError(
                "UserKnownHostsFile none would turn host key checking off, which the console "
                "never does: name a known_hosts file"
            )
        global_files = option("GlobalKnownHostsFile", list(DEFAULT_GLOBAL_KNOWN_HOSTS))
        known_hosts = tuple(Path(p).expanduser() for p in [*user_files, *global_files])
    if target.identity_files is not None:
        identity_files, named = target.identity_files, True
    else:
        named_files = option("IdentityFile")
        named = bool(named_files)
        identity_files = tuple(
            Path(p).expanduser() for p in (named_files or DEFAULT_IDENTITY_FILES)
        )
    agent = option("IdentityAgent", "SSH_AUTH_SOCK")  # asyncssh reads `none` as None
    if agent == "SSH_AUTH_SOCK":
        agent = os.environ.get("SSH_AUTH_SOCK") or None
    elif agent and agent.startswith("$"):
        agent = os.environ.get(agent[1:].strip("{}")) or None
    connect_timeout = target.connect_timeout_s or option("ConnectTimeout")
    keepalive = target.keepalive_s
    if keepalive is None:
        keepalive = option("ServerAliveInterval", DEFAULT_KEEPALIVE_S)
    fallback_user = DEFAULT_USER if is_node else getpass.getuser()
    return Hop(
        name=name,
        host=str(option("Hostname", name)),
        port=int(port or option("Port") or 22),
        user=str(user or option("User") or fallback_user),
        known_hosts=known_hosts,
        identity_files=identity_files,
        identity_files_named=named,
        identities_only=bool(option("IdentitiesOnly", False)),
        agent=str(Path(agent).expanduser()) if agent else None,
        connect_timeout_s=float(connect_timeout or DEFAULT_CONNECT_TIMEOUT_S),
        keepalive_s=float(keepalive),
        host_key_alias=option("HostKeyAlias"),
        config=config,
        ciphers_set=option("Ciphers") is not None,
    )


# --- opening one connection ---------------------------------------------------------------------

# asyncssh's own order, AES-GCM first: AES runs in hardware (AES-NI) where asyncssh's
# chacha20-poly1305 makes eight cipher objects per packet, the better part of a GPU poll's
# CPU over SSH (bench/poll_fleet.py). Every cipher OpenSSH offers by default stays on the list.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


class _RecordingClient(asyncssh.SSHClient):
    """Remembers the host key (or host CA key) the server offered and known_hosts did not
    trust, for the refusal message; never trusts anything itself."""

    def __init__(self) -> None:
        self.offered: asyncssh.SSHKey | None = None
        self.offered_ca: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        return False

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered_ca = key
        return False


@dataclass
class _Keys:
    """The keys to log in with, and what the engineer should hear about the others."""

    keys: list[asyncssh.SSHKeyPair]
    agent: asyncssh.SSHAgentClient | None
    tried: str
    notes: list[str]


async def _client_keys(hop: Hop) -> _Keys:
    """The agent's keys (only those of the identity files under IdentitiesOnly), then the
    identity files that are not encrypted. Encrypted files are left to the agent."""
    loaded, encrypted, notes = await asyncio.to_thread(_read_identity_files, hop)
    agent: asyncssh.SSHAgentClient | None = None
    agent_keys: list[asyncssh.SSHKeyPair] = []
    if hop.agent:
        try:
            agent = await asyncio.wait_for(asyncssh.connect_agent(hop.agent), 5)
            agent_keys = list(await asyncio.wait_for(agent.get_keys(), 5))
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            notes.append(f"the agent at {hop.agent} did not answer ({_reason(exc)})")
            if agent is not None:
                agent.close()
                agent = None
    if hop.identities_only:
        wanted = {public for _, public in (*loaded, *encrypted) if public is not None}
        agent_keys = [k for k in agent_keys if k.key_public_data in wanted]
    held = {k.key_public_data for k in agent_keys}
    keys = [*agent_keys, *(key for key, public in loaded if public not in held)]
    for path, public in encrypted:
        if public is not None and public in held:
            continue
        if hop.agent is None:
            where = "SSH_AUTH_SOCK is not set"
        elif agent is None:
            where = "the agent is not reachable"
        elif public is None and hop.identities_only:
            where = f"IdentitiesOnly, and no {path}.pub to find it among the agent's keys"
        else:
            where = "the agent does not hold it"
        notes.append(
            f"{path} is encrypted and used only through the agent ({where}: ssh-add {path})"
        )
    tried = f"{len(agent_keys)} agent key(s)" if agent is not None else "no agent"
    files = [str(key.get_comment() or "") for key, _ in loaded]
    if loaded:
        tried += ", " + ", ".join(f or "a key file" for f in files)
    return _Keys(keys, agent, tried, notes)


_Loaded = tuple[asyncssh.SSHKeyPair, bytes | None]


def _read_identity_files(
    hop: Hop,
) -> tuple[list[_Loaded], list[tuple[Path, bytes | None]], list[str]]:
    """Identity files read without a passphrase: (loaded, encrypted, notes)."""
    loaded: list[_Loaded] = []
    encrypted: list[tuple[Path, bytes | None]] = []
    notes: list[str] = []
    for path in hop.identity_files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if hop.identity_files_named:
                notes.append(f"{path} not found")
            continue
        except OSError as exc:
            notes.append(f"{path}: {_reason(exc)}")
            continue
        try:
            asyncssh.import_private_key(data)
        except asyncssh.KeyImportError as exc:
            if str(exc).startswith("Passphrase"):
                encrypted.append((path, _public_data(path)))
            else:
                notes.append(f"{path} is not a private key ({_reason(exc)})")
            continue
        for pair in asyncssh.load_keypairs([str(path)]):
            pair.set_comment(str(path))
            loaded.append((pair, pair.key_public_data))
    return loaded, encrypted, notes


def _public_data(path: Path) -> bytes | None:
    """The public half of an encrypted key file, from ``PATH.pub`` (for IdentitiesOnly)."""
    try:
        return asyncssh.read_public_key(str(path) + ".pub").public_data
    except (OSError, asyncssh.KeyImportError):
        return None


async def _connect(
    hop: Hop, tunnel: asyncssh.SSHClientConnection | None, label: str
) -> asyncssh.SSHClientConnection:
    """Open and authenticate one connection to ``hop`` (through ``tunnel``); every failure is
    an :class:`SshError` starting with ``label``."""
    known_hosts = [p for p in hop.known_hosts if p.is_file()]
    if not known_hosts:
        raise SshError(f"{label}: known_hosts file {hop.known_hosts[0]} not found")
    keys = await _client_keys(hop)
    client = _RecordingClient()
    try:
        return await asyncssh.connect(
            hop.name,
            hop.port,
            tunnel=tunnel,  # None: direct (ssh_config's ProxyJump is resolved by the pool)
            config=[str(hop.config)] if hop.config else None,
            client_factory=lambda: client,
            username=hop.user,
            known_hosts=[str(p) for p in known_hosts],
            client_keys=keys.keys or None,  # None: no key at all (not asyncssh's defaults)
            agent_path=None,  # the agent's keys are in client_keys already
            agent_forwarding=False,  # nodes never get the engineer's agent
            x11_forwarding=False,
            request_pty=False,  # a pty would mix stderr into stdout
            connect_timeout=hop.connect_timeout_s,
            keepalive_interval=hop.keepalive_s,
            **({} if hop.ciphers_set else {"encryption_algs": PREFERRED_CIPHERS}),
        )
    except (asyncssh.HostKeyNotVerifiable, asyncssh.KeyExchangeFailed) as exc:
        if isinstance(exc, asyncssh.KeyExchangeFailed) and "host key" not in str(exc):
            raise SshError(f"{label}: cannot connect: {_reason(exc)}") from exc
        offered = client.offered or await _fetch_host_key(hop, tunnel)
        raise SshError(_host_key_refusal(label, hop, known_hosts, offered, exc)) from exc
    except asyncssh.PermissionDenied as exc:
        if not keys.keys:
            why = "; ".join(keys.notes) or "no agent (SSH_AUTH_SOCK) and no identity file"
            raise SshError(f"{label}: authentication refused: no key to offer ({why})") from exc
        notes = "".join(f"; {n}" for n in keys.notes)
        raise SshError(f"{label}: authentication refused (tried {keys.tried}{notes})") from exc
    except ValueError as exc:  # an ssh_config asyncssh could not apply
        raise SshError(f"{label}: ssh config: {_reason(exc)}") from exc
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise SshError(f"{label}: cannot connect: {_reason(exc)}") from exc
    finally:
        if keys.agent is not None:
            keys.agent.close()


async def _fetch_host_key(
    hop: Hop,
    tunnel: asyncssh.SSHClientConnection | None,
    algorithms: Sequence[str] = (),
) -> asyncssh.SSHKey | None:
    """The host key ``hop`` offers (through ``tunnel``), trusting and storing nothing."""
    # client_keys=None: fetching a host key reads no key file (and fails on no missing one).
    options = asyncssh.SSHClientConnectionOptions(client_keys=None, config=None)
    try:
        return await asyncio.wait_for(
            asyncssh.get_server_host_key(
                hop.name,
                hop.port,
                tunnel=tunnel,
                config=[str(hop.config)] if hop.config else None,
                server_host_key_algs=list(algorithms) or (),
                options=options,
            ),
            hop.connect_timeout_s,
        )
    except (TimeoutError, OSError, asyncssh.Error):
        if algorithms:
            raise
        return None


@dataclass(frozen=True)
class _Entry:
    """One known_hosts line that names a host."""

    path: Path
    line_no: int
    marker: str  # "", "@cert-authority" or "@revoked"
    keys: tuple[asyncssh.SSHKey, ...]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line_no}"


def _entries(hop: Hop, files: Sequence[Path]) -> list[_Entry]:
    """The known_hosts lines that match ``hop`` (hashed ones too), read line by line."""
    host = hop.host_key_alias or hop.host
    addr = host if _is_ip(host) else ""
    port = None if hop.port == 22 else hop.port
    found = []
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                keys, ca_keys, revoked, *_ = asyncssh.import_known_hosts(text).match(
                    host, addr, port
                )
            except (ValueError, asyncssh.Error):
                continue  # a line asyncssh cannot read is no line for it either
            marker = text.split()[0] if text.startswith("@") else ""
            matched = tuple(keys) + tuple(ca_keys) + tuple(revoked)
            if matched:
                found.append(_Entry(path, n, marker, matched))
    return found


def _host_key_refusal(
    label: str,
    hop: Hop,
    files: Sequence[Path],
    offered: asyncssh.SSHKey | None,
    exc: Exception,
) -> str:
    """One line: what the server offered, and what known_hosts says about it and why."""
    entries = _entries(hop, files)
    if offered is None:
        fingerprint, line = "", ""
        seen = "the server's key could not be fetched again"
    else:
        fingerprint = offered.get_fingerprint("sha256")
        line = f"{hop.known_hosts_name} {_public(offered)}"
        seen = f"server offered {_key_type(offered)} {fingerprint}"
    revoked = [e for e in entries if e.marker == "@revoked" and (offered in e.keys)]
    if revoked or "revoked" in str(exc).lower():
        where = revoked[0].where if revoked else "known_hosts"
        return f"{label}: host key refused: REVOKED by {where} ({seen}); do not connect"
    plain = [e for e in entries if not e.marker]
    if any(offered in e.keys for e in plain):  # known, and refused all the same
        return f"{label}: host key refused ({_reason(exc)}; {seen})"
    if plain:
        old = plain[0]
        held = ", ".join(f"{_key_type(k)} {k.get_fingerprint('sha256')}" for k in old.keys)
        fix = (
            f"; if it was reinstalled, check {fingerprint} out of band, then replace line "
            f"{old.line_no} with: {line}"
            if line
            else ""
        )
        return (
            f"{label}: WARNING: HOST KEY CHANGED, host key refused (possible "
            f"man-in-the-middle): {seen}, but {old.where} holds {held}{fix}"
        )
    cas = [e for e in entries if e.marker == "@cert-authority"]
    if cas:
        return (
            f"{label}: host key refused: host certificate not accepted ({_reason(exc)}); "
            f"{seen}; the host's CA line is {cas[0].where}"
        )
    add = f"; check it out of band, then add to {files[0]}: {line}" if line else ""
    names = ", ".join(str(p) for p in files)
    return f"{label}: host key refused: unknown host ({seen}, not in {names}){add}"


def _key_type(key: asyncssh.SSHKey) -> str:
    """ED25519, ECDSA, RSA: as ssh prints the key's type in its messages."""
    name = key.get_algorithm().removeprefix("ssh-").removeprefix("sk-").upper()
    return "ECDSA" if name.startswith("ECDSA") else name.split("@")[0]


def _public(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...``: the key as a known_hosts line ends, without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- connections that heal themselves -----------------------------------------------------------


class _Backoff:
    """Exponential backoff with jitter between failed connection attempts."""

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.attempts = 0  # attempts made; callers waiting together share one's answer

    @property
    def wait_s(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    def check(self) -> None:
        """Raise the last error while the next attempt is not due yet: a caller in the
        window fails at once (a poll is not held up, a host that is down is not hammered)."""
        if self.wait_s > 0:
            raise SshError(f"{self.last_error} (next attempt in {self.wait_s:.1f}s)")

    def shared_failure(self, attempts_before: int) -> bool:
        """Whether an attempt made since ``attempts_before`` failed: a caller that waited for
        it takes its answer instead of trying again at once."""
        return self.attempts != attempts_before and self.failures > 0

    def failed(self, message: str) -> None:
        self.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        self.last_error = message

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0


class JumpConnection:
    """The one connection to a jump host that every node behind it tunnels through."""

    def __init__(self, hop: Hop, via: JumpConnection | None) -> None:
        self.hop = hop
        self.via = via
        self.label = f"jump host {hop.name} ({hop.address})"
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._backoff = _Backoff()

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connected(self) -> asyncssh.SSHClientConnection:
        """The live connection, opened (through the jump host before it) when there is none."""
        attempts = self._backoff.attempts
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            if self._backoff.shared_failure(attempts):
                raise SshError(self._backoff.last_error)
            self._backoff.check()
            tunnel = await self.via.connected() if self.via else None
            self._backoff.attempts += 1
            try:
                self._conn = await _connect(self.hop, tunnel, self.label)
            except SshError as exc:
                self._backoff.failed(str(exc))
                raise
            self._backoff.succeeded()
            return self._conn

    async def close(self, timeout_s: float = 5.0) -> None:
        conn, self._conn = self._conn, None
        await _close(conn, timeout_s)


class _Jumps:
    """The shared jump connections, one per chain of jump hosts."""

    def __init__(self) -> None:
        self._by_chain: dict[tuple[Hop, ...], JumpConnection] = {}

    def get(self, chain: tuple[Hop, ...]) -> JumpConnection | None:
        if not chain:
            return None
        found = self._by_chain.get(chain)
        if found is None:
            found = JumpConnection(chain[-1], self.get(chain[:-1]))
            self._by_chain[chain] = found
        return found

    def open(self) -> list[JumpConnection]:
        return [j for j in self._by_chain.values() if j.is_open]

    async def close(self, timeout_s: float = 5.0) -> None:
        # The innermost first: a tunnelled connection closes before the one it runs over.
        chains = sorted(self._by_chain, key=len, reverse=True)
        for length in sorted({len(c) for c in chains}, reverse=True):
            await asyncio.gather(
                *(self._by_chain[c].close(timeout_s) for c in chains if len(c) == length)
            )


class _Sessions:
    """The session channels of one node: at most ``limit`` at once; the others queue, first
    come first served.

    ``open`` counts the channels that did open and ``peak`` the most open at once: the node
    took that many, so a refusal lowers the limit to ``peak`` and never below it (a refusal
    may also be a session the node has not freed yet, just after one of ours closed).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.open = 0
        self.peak = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.held < self.limit and not self._waiters:
            self.held += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            while True:
                await turn
                if self.held < self.limit:
                    break
                turn = asyncio.get_running_loop().create_future()
                self._waiters.appendleft(turn)  # woken, but the limit fell: keep the place
        except asyncio.CancelledError:
            if turn in self._waiters:
                self._waiters.remove(turn)
            elif turn.done() and not turn.cancelled():
                self._wake()  # pass the turn on
            raise
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        if self.peak > self.limit:  # lowered too far while others were still opening
            self.limit = self.peak
            self._wake()

    def closed(self) -> None:
        self.open -= 1

    def refused(self) -> bool:
        """A session was refused on a live connection: whether the limit was lowered."""
        if 0 < self.peak < self.limit:
            self.limit = self.peak
            return True
        return False

    def _wake(self) -> None:
        while self._waiters and self.held < self.limit:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return


class _TimedOut(Exception):
    """A use ran past its time; ``ended``: whether what it started on the node ended (the
    node closed its channel), None: not known."""

    def __init__(self, ended: bool | None) -> None:
        self.ended = ended


class NodeConnection:
    """A lazily opened, reused SSH connection to one node (through its jump hosts)."""

    def __init__(
        self,
        target: SshTarget,
        jumps: _Jumps | None = None,
        max_sessions: int = MAX_SESSIONS_PER_NODE,
    ) -> None:
        self.target = target
        self.route: Route | None = None  # as resolved for the current connection
        self._jumps = jumps or _Jumps()
        self._owns_jumps = jumps is None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._backoff = _Backoff()
        self._sessions = _Sessions(max_sessions)
        # Local port forwards: (host, port) on the node's side -> the connection they run
        # over and their listener on 127.0.0.1 here.
        self._forwards: dict[
            tuple[str, int], tuple[asyncssh.SSHClientConnection, asyncssh.SSHListener]
        ] = {}

    @property
    def retry_in_s(self) -> float:
        """Seconds until the next connection attempt after failed ones (0: one may be made)."""
        return self._backoff.wait_s

    @property
    def session_limit(self) -> int:
        """How many channels this node takes at once (lower once it refused more)."""
        return self._sessions.limit

    def _label(self, route: Route) -> str:
        via = f" via {route.jumps[-1].name}" if route.jumps else ""
        return f"{self.target.node} ({route.node.address}{via})"

    async def _connected(self) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The live connection, and whether it was opened by this call."""
        attempts = self._backoff.attempts
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn, False
            if self._backoff.shared_failure(attempts):
                raise SshError(self._backoff.last_error)
            # In a thread: ssh_config may Include files and run `Match exec` commands.
            self._backoff.check()
            route = await asyncio.to_thread(resolve, self.target)
            jump = self._jumps.get(route.jumps)
            try:
                tunnel = await jump.connected() if jump else None
            except SshError as exc:
                raise SshError(f"{self.target.node}: {exc}") from exc
            self._backoff.attempts += 1
            try:
                self._conn = await _connect(route.node, tunnel, self._label(route))
            except SshError as exc:
                self._backoff.failed(str(exc))
                raise
            self._backoff.succeeded()
            self.route = route
            return self._conn, True

    async def _on_connection(
        self,
        what: str,
        timeout_s: float,
        use: Callable[[asyncssh.SSHClientConnection], Awaitable[_T]],
    ) -> _T:
        """Run ``use`` on the live connection; ``what`` names the work in errors.

        A reused connection that turns out dead when the channel opens is replaced and ``use``
        retried once: a channel that never opened ran nothing, so the retry is safe even for
        commands that change the node. A session the node refuses on a live connection (its
        MaxSessions, or one it has not freed yet) is queued again, never failed.
        """
        node = self.target.node
        retried = False
        refusals = 0
        while True:
            pause_s = 0.0
            await self._sessions.acquire()
            try:
                conn, fresh = await self._connected()
                try:
                    return await use(conn)
                except asyncssh.ChannelOpenError as exc:
                    if conn.is_closed():
                        self._drop(conn)
                        if fresh or retried:
                            raise SshError(f"{node}: {what}: {_reason(exc)}") from exc
                        retried = True
                        continue
                    refusals += 1
                    if refusals > MAX_REFUSALS:
                        raise SshError(
                            f"{node}: {what}: the node refused a session {refusals - 1} times "
                            f"({_reason(exc)})"
                        ) from exc
                    if self._sessions.refused():
                        log.info("%s takes %d sessions at once", node, self._sessions.limit)
                    pause_s = min(0.5, 0.02 * 2 ** (refusals - 1))
                except asyncssh.SFTPError as exc:
                    # A refused file operation (no such file, permission) leaves the
                    # connection good; only a lost one is replaced.
                    if conn.is_closed() or isinstance(exc, _SFTP_CONNECTION_GONE):
                        self._drop(conn)
                    raise SshError(f"{node}: {what}: {_reason(exc)}") from exc
                except _TimedOut as exc:
                    # Not ended and alone on the connection: the connection may be half dead,
                    # or the command ignores its signal (root logins), and closing the
                    # connection ends it. Shared, the others' commands are kept (they may be
                    # changing the node) and keepalive judges the connection.
                    if not exc.ended and self._sessions.held == 1:
                        self._drop(conn)
                    raise CommandTimedOut(
                        f"{node}: {what} timed out after {timeout_s:g}s"
                    ) from None
                except (OSError, asyncssh.Error) as exc:
                    self._drop(conn)
                    raise SshError(f"{node}: {what}: {_reason(exc)}") from exc
            finally:
                self._sessions.release()
            await asyncio.sleep(pause_s)

    @contextlib.asynccontextmanager
    async def _process(
        self, conn: asyncssh.SSHClientConnection, command: str, **kwargs: Any
    ) -> AsyncIterator[asyncssh.SSHClientProcess[str]]:
        """A command's channel; on the way out a command still running is killed and its
        channel closed."""
        process = await conn.create_process(command, **kwargs)
        self._sessions.opened()
        try:
            yield process
        finally:
            self._sessions.closed()
            if process.exit_status is None and process.exit_signal is None:
                # Closing the channel alone leaves a quiet command (sleep) running on
                # OpenSSH: signal it first (OpenSSH >= 7.9 honours signal requests).
                with contextlib.suppress(OSError, asyncssh.Error):
                    process.send_signal("KILL")
            process.close()

    @contextlib.asynccontextmanager
    async def _sftp(self, conn: asyncssh.SSHClientConnection) -> AsyncIterator[asyncssh.SFTPClient]:
        async with conn.start_sftp_client() as sftp:
            self._sessions.opened()
            try:
                yield sftp
            finally:
                self._sessions.closed()

    async def _timed_process(
        self,
        conn: asyncssh.SSHClientConnection,
        command: str,
        timeout_s: float,
        body: Callable[[asyncssh.SSHClientProcess[str]], Awaitable[asyncssh.SSHCompletedProcess]],
        **kwargs: Any,
    ) -> asyncssh.SSHCompletedProcess:
        """Run ``body`` on a new command channel within ``timeout_s``. Past it the command is
        killed and its channel closed; :class:`_TimedOut` says whether it ended."""
        process: asyncssh.SSHClientProcess[str] | None = None
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(timeout_s):
                    process = await stack.enter_async_context(
                        self._process(conn, command, **kwargs)
                    )
                    result = await body(process)
            except TimeoutError:
                if process is None:
                    raise _TimedOut(None) from None  # the channel never opened
                await stack.aclose()  # kill the command and close its channel
                try:
                    # The node closes the channel once the command has ended.
                    await asyncio.wait_for(process.wait_closed(), ENDED_S)
                except TimeoutError:
                    raise _TimedOut(False) from None
                raise _TimedOut(True) from None
        if result.exit_status is None and conn.is_closed():
            raise asyncssh.ConnectionLost("connection lost")  # it closed under the command
        return result

    async def _timed(self, work: Awaitable[_T], timeout_s: float) -> _T:
        try:
            return await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            raise _TimedOut(None) from None

    async def run(self, command: str, timeout_s: float = 30.0) -> str:
        """Run ``command`` and return its stdout.

        Raises :class:`CommandFailed` when it exits non-zero (with what it printed) and
        :class:`SshError` when it could not run to its end (no connection, timeout, the
        connection dropped).
        """

        async def use(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
            return await self._timed_process(conn, command, timeout_s, _wait)

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

        async def body(process: asyncssh.SSHClientProcess[str]) -> asyncssh.SSHCompletedProcess:
            await asyncio.gather(pump(process.stdout, stdout), pump(process.stderr, stderr))
            return await process.wait()

        async def use(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
            # errors="replace": one stray byte of a binary file must not end the stream.
            return await self._timed_process(conn, command, timeout_s, body, errors="replace")

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
        async def read(conn: asyncssh.SSHClientConnection) -> bytes:
            async with self._sftp(conn) as sftp, sftp.open(path, "rb") as f:
                return cast(bytes, await f.read())  # "rb": bytes

        async def use(conn: asyncssh.SSHClientConnection) -> bytes:
            return await self._timed(read(conn), timeout_s)

        return await self._on_connection(f"sftp read {path}", timeout_s, use)

    async def write_file(self, path: str, data: bytes, timeout_s: float = 30.0) -> None:
        async def write(conn: asyncssh.SSHClientConnection) -> None:
            async with self._sftp(conn) as sftp, sftp.open(path, "wb") as f:
                await f.write(data)

        async def use(conn: asyncssh.SSHClientConnection) -> None:
            await self._timed(write(conn), timeout_s)

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

        async def replace(conn: asyncssh.SSHClientConnection) -> None:
            async with self._sftp(conn) as sftp:
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

        async def use(conn: asyncssh.SSHClientConnection) -> None:
            await self._timed(replace(conn), timeout_s)

        await self._on_connection(f"sftp replace {path}", timeout_s, use)

    async def listdir(self, folder: str, timeout_s: float = 30.0) -> list[str]:
        """The names in ``folder`` (without ``.`` and ``..``)."""

        async def listing(conn: asyncssh.SSHClientConnection) -> list[str]:
            async with self._sftp(conn) as sftp:
                names = await sftp.listdir(folder)
            return [str(n) for n in names if n not in (".", "..")]

        async def use(conn: asyncssh.SSHClientConnection) -> list[str]:
            return await self._timed(listing(conn), timeout_s)

        return await self._on_connection(f"sftp list {folder}", timeout_s, use)

    async def forward(self, host: str, port: int, timeout_s: float = 10.0) -> int:
        """A port on 127.0.0.1 here that reaches ``host:port`` as the node sees it (an engine
        bound to the node's localhost), over this node's connection; made again after the
        connection is replaced. The first use is tried at once, so that a node refusing
        forwarding (AllowTcpForwarding no) says so in one line rather than as a closed socket.
        """
        key = (host, port)
        held = self._forwards.get(key)
        if held is not None and held[0] is self._conn and not held[0].is_closed():
            return int(held[1].get_port())
        node = self.target.node
        conn, _ = await self._connected()
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await conn.open_connection(host, port)
                writer.close()
                listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
        except TimeoutError:
            raise SshError(f"{node}: forward to {host}:{port} timed out") from None
        except asyncssh.ChannelOpenError as exc:
            raise SshError(
                f"{node}: forward to {host}:{port} refused by the node: {_reason(exc)} "
                "(is AllowTcpForwarding on in its sshd, and the engine listening?)"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            self._drop(conn)
            raise SshError(f"{node}: forward to {host}:{port}: {_reason(exc)}") from exc
        if held is not None:
            held[1].close()
        self._forwards[key] = (conn, listener)
        return int(listener.get_port())

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Close a connection that failed (its socket and keepalive timer go with it)."""
        conn.close()
        if self._conn is conn:
            self._conn = None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the connection; a peer that never answers the close is cut off after
        ``timeout_s`` so that shutdown never hangs on one dead node."""
        conn, self._conn = self._conn, None
        for _, listener in self._forwards.values():
            listener.close()
        self._forwards.clear()
        await _close(conn, timeout_s)
        if self._owns_jumps:
            await self._jumps.close(timeout_s)


async def _wait(process: asyncssh.SSHClientProcess[str]) -> asyncssh.SSHCompletedProcess:
    return await process.wait()


async def _close(conn: asyncssh.SSHClientConnection | None, timeout_s: float) -> None:
    if conn is None:
        return
    conn.close()
    try:
        await asyncio.wait_for(conn.wait_closed(), timeout_s)
    except TimeoutError:
        conn.abort()


class SshPool:
    """One :class:`NodeConnection` per configured node, shared by everyone who needs SSH, and
    one :class:`JumpConnection` per jump host, shared by the nodes behind it."""

    def __init__(self, targets: Iterable[SshTarget]) -> None:
        self._jumps = _Jumps()
        self._nodes: dict[str, NodeConnection] = {}
        for target in targets:
            if target.node in self._nodes:
                raise ValueError(f"node {target.node} is listed twice")
            self._nodes[target.node] = NodeConnection(target, self._jumps)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    @property
    def jump_connections(self) -> list[JumpConnection]:
        """The jump host connections open now."""
        return self._jumps.open()

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

    async def forwarded_url(self, node: str, url: str) -> str:
        """``url`` (as the node sees it: http://127.0.0.1:8000) with its host and port
        replaced by a local forward over the node's connection."""
        parts = urlsplit(url)
        if parts.hostname is None:
            raise SshError(f"{node}: cannot forward {url}: no host in it")
        default = 443 if parts.scheme == "https" else 80
        local = await self.connection(node).forward(parts.hostname, parts.port or default)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{local}"))

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
        """Close every connection at once, each bounded by ``timeout_s``: the nodes', then
        the jump hosts' they ran over."""
        await asyncio.gather(*(c.close(timeout_s) for c in self._nodes.values()))
        await self._jumps.close(timeout_s)


# --- host keys for the engineer to check ----------------------------------------------------------


async def scan_host_keys(target: SshTarget, *, hashed: bool = False) -> list[str]:
    """The host keys ``target``'s node offers, as known_hosts lines (as ``ssh-keyscan``
    prints them, one per key type), for the engineer to check out of band and append to the
    known_hosts file; ``hashed`` writes the host name hashed (as ``HashKnownHosts yes``).

    The node is reached as the console reaches it: its ssh_config (Host alias, HostName,
    Port) and its jump hosts, whose own host keys must already be trusted (the node's keys
    could not be believed through a jump host that is not: a refused jump host's error gives
    its fingerprint and line). Nothing is trusted, stored or written here. Raises
    :class:`SshError` (one line naming the node) when no key could be read.
    """
    route = await asyncio.to_thread(resolve, target)
    hop = route.node
    jumps = _Jumps()
    try:
        jump = jumps.get(route.jumps)
        try:
            tunnel = await jump.connected() if jump else None
        except SshError as exc:
            raise SshError(f"{target.node}: {exc}") from exc
        answers = await asyncio.gather(
            *(_fetch_host_key(hop, tunnel, algs) for algs in SCAN_ALGORITHMS),
            return_exceptions=True,
        )
    finally:
        await jumps.close()
    keys = [a for a in answers if isinstance(a, asyncssh.SSHKey)]
    if not keys:
        failures = [a for a in answers if isinstance(a, BaseException)]
        no_match = all(isinstance(f, asyncssh.KeyExchangeFailed) for f in failures)
        reason = "no host key of a known type" if no_match else _reason(failures[0])
        raise SshError(f"{target.node} ({hop.address}): cannot scan host keys: {reason}")
    name = _hashed_name(hop.known_hosts_name) if hashed else hop.known_hosts_name
    return sorted({f"{name} {_public(key)}" for key in keys})


def _hashed_name(name: str) -> str:
    """``|1|salt|hash``: a host name as HashKnownHosts writes it (HMAC-SHA1, random salt)."""
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
