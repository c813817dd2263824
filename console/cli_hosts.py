"""``llmops hosts scan NODE...``: the host keys a node offers, as known_hosts lines to review.

Like ``ssh-keyscan``, but reaching each node the way the console does (its ssh_config alias,
port and jump hosts): the lines go to stdout, ready to append to the known_hosts file once
checked; each key's SHA256 fingerprint goes to stderr as a comment, to compare with what the
node's owner reads on its console (``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub``).
Nothing is trusted or written here: the console keeps refusing a key until the engineer adds
its line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncssh

from backends.ssh import SshError, scan_host_keys
from console.config import Config, NodeConfig, RouterConfig


class HostsUsageError(Exception):
    """A node name the config does not know: exit 2."""


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    hosts = commands.add_parser("hosts", help="SSH host keys of the nodes")
    actions = hosts.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    scan = actions.add_parser(
        "scan",
        parents=[common],
        help="print the known_hosts lines of the keys the nodes offer (to check, then append)",
    )
    scan.add_argument("names", nargs="+", metavar="NODE", help="a node or router name")
    scan.add_argument(
        "--hash", action="store_true", help="write host names hashed, as HashKnownHosts does"
    )


def hosts_command(config: Config, args: argparse.Namespace) -> int:
    """Exit 0 when every node's keys were read, 1 when one could not be reached."""
    from console.hub import ssh_target

    hosts: dict[str, NodeConfig | RouterConfig] = {h.name: h for h in config.nodes}
    hosts.update((r.name, r) for r in config.routers)
    unknown = [name for name in args.names if name not in hosts]
    if unknown:
        raise HostsUsageError(
            f"hosts scan: {', '.join(unknown)}: not a node or router in {config.path} "
            f"(known: {', '.join(hosts) or 'none'})"
        )
    targets = [ssh_target(config, hosts[name]) for name in dict.fromkeys(args.names)]

    async def scan_all() -> list[list[str] | BaseException]:
        return await asyncio.gather(
            *(scan_host_keys(t, hashed=args.hash) for t in targets), return_exceptions=True
        )

    failed = False
    for target, answer in zip(targets, asyncio.run(scan_all()), strict=True):
        if isinstance(answer, SshError):
            print(f"llmops: {answer}", file=sys.stderr)
            failed = True
            continue
        if isinstance(answer, BaseException):
            raise answer
        for line in answer:
            print(f"# {target.node}: {_fingerprint(line)}", file=sys.stderr)
            print(line, flush=True)
    return 1 if failed else 0


def _fingerprint(line: str) -> str:
    """``ssh-ed25519 SHA256:...`` of a known_hosts line's key."""
    _, key_type, key_data = line.split(" ", 2)
    key = asyncssh.import_public_key(f"{key_type} {key_data}")
    return f"{key_type} {key.get_fingerprint('sha256')}"
