"""The SSH backend against a real OpenSSH sshd on 127.0.0.1 (installed by .ci/run)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from backends.gpu import LEGACY_QUERY_FIELDS, QUERY_FIELDS, GpuReader
from backends.ssh import (
    CommandFailed,
    CommandTimedOut,
    NodeConnection,
    SshError,
    SshPool,
    SshTarget,
    scan_host_keys,
)
from tests.conftest import FIXTURES
from tests.sshd import Sshd, free_port, sshd_available, start_sshd

if not sshd_available() and os.environ.get("LLMOPS_REQUIRE_SSHD"):
    raise RuntimeError("LLMOPS_REQUIRE_SSHD is set but OpenSSH sshd is not installed")
pytestmark = pytest.mark.skipif(
    not sshd_available(), reason="OpenSSH sshd is not installed (.ci/run installs it)"
)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = start_sshd(tmp_path / "sshd", FIXTURES / "gpu" / "nvidia-smi-query-load.csv")
    yield server
    server.stop()


def _target(sshd: Sshd, known_hosts: Path | None = None, port: int | None = None) -> SshTarget:
    return SshTarget(
        node="gpu-a1",
        host="127.0.0.1",
        port=port or sshd.port,
        user=sshd.user,
        known_hosts=known_hosts or sshd.known_hosts,
        identity_files=(sshd.client_key,),
        connect_timeout_s=5,
    )


async def test_gpu_readings_over_real_sshd_reuse_one_connection(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    reader = GpuReader("gpu-a1", conn.run)
    (gpu,) = await reader.read()
    first = conn._conn
    (again,) = await reader.read()
    assert conn._conn is first  # one persistent connection per node
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert again.power_w == pytest.approx(698.06)
    await conn.close()


async def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    conn = NodeConnection(_target(sshd, known_hosts=empty))
    with pytest.raises(SshError) as info:
        await conn.run("true")
    message = str(info.value)
    assert "host key refused" in message
    assert sshd.host_key.get_fingerprint("sha256") in message
    assert "\n" not in message


async def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    stale = tmp_path / "stale_known_hosts"
    stale.write_bytes(f"[127.0.0.1]:{sshd.port} ".encode() + other.export_public_key("openssh"))
    with pytest.raises(SshError, match=r"host key refused.*SHA256:"):
        await NodeConnection(_target(sshd, known_hosts=stale)).run("true")


async def test_failed_command_names_host_command_and_status(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    with pytest.raises(SshError, match=r"gpu-a1: `ls /nonexistent` exited 2: .*No such file"):
        await conn.run("ls /nonexistent")
    await conn.close()


async def test_sftp_round_trip(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    path = str(sshd.root / "args.yaml")
    await conn.write_file(path, b"max-num-batched-tokens: 2048\n")
    assert await conn.read_file(path) == b"max-num-batched-tokens: 2048\n"
    await conn.close()


async def test_reconnects_after_the_daemon_comes_back(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    assert "H100" in await conn.run("nvidia-smi")
    sshd.stop()
    with pytest.raises(SshError):
        await conn.run("nvidia-smi")
    with pytest.raises(SshError, match="cannot connect"):
        await conn.run("nvidia-smi")
    sshd.restart()  # same port, same host key: a node that rebooted
    await asyncio.sleep(conn.retry_in_s)  # the next attempt is due (backoff)
    assert "H100" in await conn.run("nvidia-smi")
    await conn.close()


async def test_nothing_listening_is_a_one_line_error(tmp_path: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("")
    target = SshTarget("gpu-z9", "127.0.0.1", free_port(), "llmops", known, connect_timeout_s=2)
    with pytest.raises(SshError, match=r"^gpu-z9 \(llmops@127.0.0.1:\d+\): cannot connect"):
        await NodeConnection(target).run("true")


async def test_callers_waiting_together_share_one_attempt_then_back_off(tmp_path: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("")
    conn = NodeConnection(SshTarget("gpu-z9", "127.0.0.1", free_port(), "llmops", known))
    failures = await asyncio.gather(*(conn.run("true") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(f, SshError) and "cannot connect" in str(f) for f in failures)
    assert conn._backoff.attempts == 1  # one attempt, its answer given to all five
    delays = []
    for n in range(2):
        delays.append(conn.retry_in_s)
        started = time.monotonic()
        with pytest.raises(SshError, match=r"cannot connect: connection refused \(next attempt in"):
            await conn.run("true")  # before the next attempt is due: at once, no attempt
        assert time.monotonic() - started < 0.1 and conn._backoff.attempts == n + 1
        await asyncio.sleep(conn.retry_in_s)
        with pytest.raises(SshError, match=r"cannot connect: connection refused$"):
            await conn.run("true")  # due: a new attempt
    # Exponential with jitter: each delay in [0.5, 1] x 0.5 s x 2^n.
    for n, delay in enumerate(delays):
        assert 0.25 * 2**n - 0.05 <= delay <= 0.5 * 2**n
    assert conn._backoff.attempts == 3


async def test_a_hung_command_times_out_and_the_connection_stays_usable(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    assert "H100" in await conn.run("nvidia-smi")
    (session,) = sshd.sessions()
    capture = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    sshd.fake_nvidia_smi("#!/bin/sh\nread never\n")  # wedged until its channel goes
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match=r"^gpu-a1: `nvidia-smi` timed out after 0.5s$"):
        await conn.run("nvidia-smi", timeout_s=0.5)
    assert time.monotonic() - started < 2  # it ended with its channel
    sshd.fake_nvidia_smi(f"#!/bin/sh\nexec cat {capture}\n")
    assert "H100" in await conn.run("nvidia-smi")
    assert sshd.sessions() == [session]  # the same connection, not a new one
    await conn.close()


async def test_a_timed_out_command_that_outlives_its_channel_ends_with_the_connection(
    sshd: Sshd,
) -> None:
    # OpenSSH ignores signal requests on root logins: closing the connection ends the command.
    conn = NodeConnection(_target(sshd))
    with pytest.raises(CommandTimedOut, match=r"`sleep 30` timed out after 0.5s"):
        await conn.run("sleep 30", timeout_s=0.5)
    deadline = time.monotonic() + 5
    while sshd.runs("sleep"):  # killed by its signal, or with its connection
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await conn.run("echo next")).strip() == "next"
    await conn.close()


async def test_a_timeout_on_a_node_that_stopped_answering_drops_the_connection(
    sshd: Sshd,
) -> None:
    conn = NodeConnection(_target(sshd))
    command = asyncio.create_task(conn.run("sleep 30", timeout_s=1))
    while not sshd.runs("sleep"):
        await asyncio.sleep(0.05)
    (session,) = sshd.sessions()
    session.suspend()  # the TCP connection stays up, nothing answers on it any more
    try:
        with pytest.raises(CommandTimedOut):
            await command
        assert conn._conn is None  # unanswered: not kept for the next call
    finally:
        session.resume()
    assert (await conn.run("echo back")).strip() == "back"
    await conn.close()


# --- The pool: one connection per node, shared, and healing itself -------------------------


def _pool(sshd: Sshd) -> SshPool:
    return SshPool([_target(sshd)])


async def test_the_pool_keeps_one_connection_per_node_for_every_caller(sshd: Sshd) -> None:
    pool = _pool(sshd)
    reader = GpuReader("gpu-a1", pool.runner("gpu-a1"))
    path = str(sshd.root / "args.yaml")
    await asyncio.gather(
        reader.read(),
        pool.run("gpu-a1", "hostname"),
        pool.write_file("gpu-a1", path, b"max-num-batched-tokens: 2048\n"),
    )
    assert await pool.read_file("gpu-a1", path) == b"max-num-batched-tokens: 2048\n"
    assert len(sshd.sessions()) == 1  # the node sees one SSH connection from the console
    await pool.close()


async def test_an_unknown_node_is_a_one_line_error(sshd: Sshd) -> None:
    with pytest.raises(SshError, match=r"^gpu-z9: not a configured node$"):
        await _pool(sshd).run("gpu-z9", "true")


async def test_exec_reconnects_when_the_connection_dropped_between_calls(sshd: Sshd) -> None:
    pool = _pool(sshd)
    assert (await pool.run("gpu-a1", "echo one")).strip() == "one"
    assert sshd.drop_connections() == 1  # a NAT or firewall forgot the connection
    assert (await pool.run("gpu-a1", "echo two")).strip() == "two"
    assert len(sshd.sessions()) == 1
    await pool.close()


async def test_sftp_reconnects_when_the_connection_dropped_between_calls(sshd: Sshd) -> None:
    pool = _pool(sshd)
    path = str(sshd.root / "args.yaml")
    await pool.write_file("gpu-a1", path, b"a: 1\n")
    sshd.drop_connections()
    await pool.write_file("gpu-a1", path, b"a: 2\n")
    sshd.drop_connections()
    assert await pool.read_file("gpu-a1", path) == b"a: 2\n"
    await pool.close()


async def test_a_connection_lost_mid_command_fails_it_and_the_next_call_reconnects(
    sshd: Sshd,
) -> None:
    pool = _pool(sshd)
    command = asyncio.create_task(pool.run("gpu-a1", "sleep 5; echo done"))
    while not sshd.runs("sleep"):
        await asyncio.sleep(0.05)  # wait until the command runs on the node
    sshd.drop_connections()
    with pytest.raises(SshError) as info:
        await command
    assert str(info.value) == "gpu-a1: `sleep 5; echo done`: connection lost"
    assert (await pool.run("gpu-a1", "echo back")).strip() == "back"
    await pool.close()


async def test_a_command_killed_by_a_signal_says_so(sshd: Sshd) -> None:
    pool = _pool(sshd)
    with pytest.raises(SshError, match=r"^gpu-a1: `kill -TERM \$\$` killed by signal TERM$"):
        await pool.run("gpu-a1", "kill -TERM $$")
    await pool.close()


async def test_a_timeout_spares_the_other_commands_on_the_connection(sshd: Sshd) -> None:
    pool = _pool(sshd)
    restart = asyncio.create_task(pool.run("gpu-a1", "sleep 1; echo restarted", timeout_s=10))
    with pytest.raises(SshError, match=r"^gpu-a1: `sleep 30` timed out after 0.3s$"):
        await pool.run("gpu-a1", "sleep 30", timeout_s=0.3)  # a wedged nvidia-smi, say
    assert (await restart).strip() == "restarted"  # a runbook step is not cut off
    await pool.close()


async def test_a_refused_file_keeps_the_connection(sshd: Sshd) -> None:
    pool = _pool(sshd)
    await pool.run("gpu-a1", "true")
    (session,) = sshd.sessions()
    with pytest.raises(SshError, match=r"^gpu-a1: sftp read /nonexistent/args.yaml: No such file"):
        await pool.read_file("gpu-a1", "/nonexistent/args.yaml")
    await pool.run("gpu-a1", "true")
    assert sshd.sessions() == [session]  # a missing file is no reason to reconnect
    await pool.close()


async def test_a_failed_command_keeps_what_it_printed(sshd: Sshd) -> None:
    pool = _pool(sshd)
    with pytest.raises(CommandFailed) as info:
        await pool.run("gpu-a1", "echo out; echo err >&2; exit 3")
    failure = info.value
    assert (failure.exit_status, failure.stdout, failure.stderr) == (3, "out\n", "err\n")
    assert str(failure) == "gpu-a1: `echo out; echo err >&2; exit 3` exited 3: err"
    await pool.close()


async def test_close_is_bounded_even_when_a_node_stopped_answering(sshd: Sshd) -> None:
    pool = _pool(sshd)
    await pool.run("gpu-a1", "true")
    frozen = [p for s in sshd.sessions() for p in (s, *s.children(recursive=True))]
    for process in frozen:
        process.suspend()  # a node that hangs without dropping the TCP connection
    try:
        started = time.monotonic()
        await pool.close(timeout_s=1)
        assert time.monotonic() - started < 2
    finally:
        for process in frozen:
            process.resume()


# --- nvidia-smi's legacy field name, decided from its own answer ---------------------------

# What a pre-535 driver does with the new field name: the message and the blank line on
# stdout, nothing on stderr, exit status 2 (as captured from a real nvidia-smi in
# github.com/CoHDI/composable-resource-operator/issues/37 for another field); with the old
# name it prints the same table under the old header.
OLD_DRIVER = """#!/bin/sh
case "$*" in
  *clocks_event_reasons*)
    printf 'Field "clocks_event_reasons.active" is not a valid field to query.\\n\\n'; exit 2;;
esac
sed 's/clocks_event_reasons/clocks_throttle_reasons/' {capture}
"""


def _recording(pool: SshPool, commands: list[str], timeout_s: float = 10):
    async def run(command: str) -> str:
        commands.append(command)
        return await pool.run("gpu-a1", command, timeout_s)

    return run


async def test_old_driver_switches_to_the_legacy_field_name_once(sshd: Sshd) -> None:
    capture = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    sshd.fake_nvidia_smi(OLD_DRIVER.replace("{capture}", str(capture)))
    pool = _pool(sshd)
    commands: list[str] = []
    reader = GpuReader("gpu-old", _recording(pool, commands))
    (gpu,) = await reader.read()
    assert gpu.clock_events == ("power cap",)
    assert reader.fields == LEGACY_QUERY_FIELDS
    await reader.read()
    assert ["clocks_event_reasons" in c for c in commands] == [True, False, False]
    await pool.close()


async def test_a_timeout_keeps_the_modern_query(sshd: Sshd) -> None:
    capture = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    sshd.fake_nvidia_smi("#!/bin/sh\nsleep 30\n")  # a wedged GPU hangs nvidia-smi
    pool = _pool(sshd)
    commands: list[str] = []
    reader = GpuReader("gpu-a1", _recording(pool, commands, timeout_s=0.5))
    with pytest.raises(SshError, match=r"timed out after 0.5s"):
        await reader.read()
    assert reader.fields == QUERY_FIELDS
    assert len(commands) == 1  # one command per poll, not a second legacy attempt
    sshd.fake_nvidia_smi(f"#!/bin/sh\nexec cat {capture}\n")
    (gpu,) = await reader.read()
    assert gpu.clock_events == ("power cap",)
    assert all("clocks_event_reasons" in c for c in commands)
    await pool.close()


async def test_another_failure_naming_the_field_keeps_the_modern_query(sshd: Sshd) -> None:
    # nvidia-smi's answer after a driver upgrade without a reboot, on stdout with exit status
    # 18 (as printed in github.com/mozilla/translations/issues/1167 and
    # github.com/anderskm/gputil/issues/55); the error names the command, and so the field.
    sshd.fake_nvidia_smi(
        "#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch'\n"
        "echo 'NVML library version: 550.144'\nexit 18\n"
    )
    pool = _pool(sshd)
    reader = GpuReader("gpu-a1", pool.runner("gpu-a1"))
    with pytest.raises(CommandFailed, match=r"exited 18: Failed to initialize NVML"):
        await reader.read()
    assert reader.fields == QUERY_FIELDS
    await pool.close()


# --- Keys: the agent and key files ------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_outside_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an agent a test starts itself is used."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    """A real ssh-agent on a socket of its own; yields the socket's path."""
    socket_path = tmp_path / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield socket_path
    process.terminate()
    process.wait(timeout=5)


def _encrypted_key(folder: Path, passphrase: str = "correct horse") -> Path:
    key = folder / "id_encrypted"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True
    )
    return key


def _ssh_add(agent: Path, key: Path, passphrase: str = "correct horse") -> None:
    """``ssh-add KEY``, its passphrase typed by an askpass script (as a desktop would)."""
    askpass = key.parent / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
    askpass.chmod(0o755)
    env = {
        **os.environ,
        "SSH_AUTH_SOCK": str(agent),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
    }
    subprocess.run(
        ["ssh-add", str(key)], env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True
    )


async def test_an_encrypted_key_logs_in_through_the_agent_only(
    sshd: Sshd, agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _encrypted_key(tmp_path)
    sshd.authorize(asyncssh.read_public_key(str(key) + ".pub"))
    target = SshTarget("gpu-a1", "127.0.0.1", sshd.port, sshd.user, sshd.known_hosts, (key,))
    with pytest.raises(SshError) as info:  # no agent: a clear line, never a prompt
        await NodeConnection(target).run("true")
    message = str(info.value)
    assert message.startswith(f"gpu-a1 ({sshd.user}@127.0.0.1:{sshd.port}): authentication")
    assert f"{key} is encrypted and used only through the agent" in message
    assert f"SSH_AUTH_SOCK is not set: ssh-add {key}" in message
    assert "\n" not in message

    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent))
    with pytest.raises(SshError, match=r"the agent does not hold it: ssh-add"):
        await NodeConnection(target).run("true")
    _ssh_add(agent, key)
    conn = NodeConnection(target)
    assert (await conn.run("echo via agent")).strip() == "via agent"
    await conn.close()
    # From ssh_config, with IdentitiesOnly: the agent's key is matched by KEY.pub.
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host gpu-a1\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {sshd.known_hosts}\n"
    )
    conn = NodeConnection(SshTarget("gpu-a1", "gpu-a1", ssh_config=config))
    assert (await conn.run("echo only")).strip() == "only"
    await conn.close()


async def test_a_key_file_alone_logs_in_and_a_wrong_one_is_named(
    sshd: Sshd, tmp_path: Path
) -> None:
    conn = NodeConnection(_target(sshd))
    assert (await conn.run("echo file")).strip() == "file"
    await conn.close()
    other = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    target = SshTarget("gpu-a1", "127.0.0.1", sshd.port, sshd.user, sshd.known_hosts, (other,))
    with pytest.raises(SshError, match=rf"authentication refused \(tried no agent, {other}\)$"):
        await NodeConnection(target).run("true")


# --- A jump host, configured through ssh_config only ---------------------------------------


@dataclass
class Bastion:
    """A jump host and the nodes only it is meant to reach, each a real sshd."""

    jump: Sshd
    nodes: dict[str, Sshd]
    ssh_config: Path
    known_hosts: Path

    def target(self, node: str) -> SshTarget:
        return SshTarget(node=node, host=node, ssh_config=self.ssh_config)

    def trust(self, *lines: str) -> None:
        self.known_hosts.write_text("".join(line + "\n" for line in lines))

    def trust_all(self) -> None:
        self.trust(self.jump.known_hosts_line, *(n.known_hosts_line for n in self.nodes.values()))


def _bastion(
    root: Path, nodes: Sequence[str] = ("gpu-a1",), options: Sequence[str] = ()
) -> Bastion:
    # Only the jump host may forward; the nodes take logins and run commands.
    jump = start_sshd(root / "bastion", options=["AllowTcpForwarding yes"])
    servers = {name: start_sshd(root / name, options=options) for name in nodes}
    known_hosts = root / "known_hosts"
    (root / "bastion.conf").write_text(
        "Host bastion\n"
        "  HostName 127.0.0.1\n"
        f"  Port {jump.port}\n"
        f"  User {jump.user}\n"
        f"  IdentityFile {jump.client_key}\n"
        "  IdentitiesOnly yes\n"
        "  ServerAliveInterval 5\n"
    )
    config = root / "ssh_config"
    config.write_text(
        f"Include {root / 'bastion.conf'}\n"
        "\n"
        + "".join(
            f"Host {name}\n"
            "  HostName 127.0.0.1\n"
            f"  Port {server.port}\n"
            f"  User {server.user}\n"
            f"  IdentityFile {server.client_key}\n"
            for name, server in servers.items()
        )
        + "\nHost gpu-*\n  ProxyJump bastion\n  ConnectTimeout 5\n"
        + f"\nHost *\n  UserKnownHostsFile {known_hosts}\n"
    )
    bastion = Bastion(jump, servers, config, known_hosts)
    bastion.trust_all()
    return bastion


@pytest.fixture
def bastion(tmp_path: Path) -> Iterator[Bastion]:
    hosts = _bastion(tmp_path, ("gpu-a1", "gpu-a2"))
    yield hosts
    for server in (hosts.jump, *hosts.nodes.values()):
        server.stop()


async def test_a_node_behind_a_jump_host_from_ssh_config_alone(bastion: Bastion) -> None:
    pool = SshPool([bastion.target("gpu-a1")])
    node = bastion.nodes["gpu-a1"]
    assert "H100" in await pool.run("gpu-a1", "nvidia-smi")
    # The node's connection was made by the jump host's sshd, not by this process.
    assert node.clients() and node.clients() <= bastion.jump.descendants()
    assert os.getpid() not in node.clients()
    route = pool.connection("gpu-a1").route
    assert route is not None and [h.name for h in route.jumps] == ["bastion"]
    assert route.node.address == f"{node.user}@127.0.0.1:{node.port}"
    await pool.close()


async def test_two_nodes_behind_one_jump_host_share_its_connection(bastion: Bastion) -> None:
    pool = SshPool([bastion.target("gpu-a1"), bastion.target("gpu-a2")])
    one, two, _ = await asyncio.gather(
        pool.run("gpu-a1", "echo one"), pool.run("gpu-a2", "echo two"), pool.run("gpu-a1", "true")
    )
    assert (one.strip(), two.strip()) == ("one", "two")
    assert len(bastion.jump.sessions()) == 1  # one login on the jump host for both nodes
    assert len(pool.jump_connections) == 1
    assert [len(n.sessions()) for n in bastion.nodes.values()] == [1, 1]
    await pool.close()
    assert pool.jump_connections == []


async def test_unknown_and_changed_keys_are_refused_through_the_jump_host(
    bastion: Bastion,
) -> None:
    jump, node = bastion.jump, bastion.nodes["gpu-a1"]
    target = bastion.target("gpu-a1")

    bastion.trust(node.known_hosts_line)  # the jump host is unknown
    with pytest.raises(SshError) as info:
        await NodeConnection(target).run("true")
    message = str(info.value)
    assert message.startswith(f"gpu-a1: jump host bastion ({jump.user}@127.0.0.1:{jump.port})")
    assert "host key refused: unknown host" in message
    assert jump.host_key.get_fingerprint("sha256") in message
    assert message.endswith(f"add to {bastion.known_hosts}: {jump.known_hosts_line}")

    bastion.trust(jump.known_hosts_line)  # the node is unknown
    with pytest.raises(SshError) as info:
        await NodeConnection(target).run("true")
    message = str(info.value)
    assert message.startswith(f"gpu-a1 ({node.user}@127.0.0.1:{node.port} via bastion): ")
    assert node.host_key.get_fingerprint("sha256") in message
    assert message.endswith(f": {node.known_hosts_line}") and "\n" not in message

    stale = asyncssh.generate_private_key("ssh-ed25519")
    bastion.trust(jump.known_hosts_line, f"[127.0.0.1]:{node.port} {_openssh(stale)}")
    with pytest.raises(SshError) as info:  # the node's key changed
        await NodeConnection(target).run("true")
    message = str(info.value)
    assert "WARNING: HOST KEY CHANGED" in message and "man-in-the-middle" in message
    assert f"{bastion.known_hosts}:2 holds ED25519 {stale.get_fingerprint('sha256')}" in message
    assert f"server offered ED25519 {node.host_key.get_fingerprint('sha256')}" in message
    assert message.endswith(f"replace line 2 with: {node.known_hosts_line}")

    bastion.trust(f"[127.0.0.1]:{jump.port} {_openssh(stale)}", node.known_hosts_line)
    with pytest.raises(SshError, match=r"^gpu-a1: jump host bastion .*HOST KEY CHANGED"):
        await NodeConnection(target).run("true")  # the jump host's key changed


async def test_a_restarted_node_and_a_restarted_jump_host_are_reconnected(
    bastion: Bastion,
) -> None:
    pool = SshPool([bastion.target("gpu-a1")])
    jump, node = bastion.jump, bastion.nodes["gpu-a1"]
    assert (await pool.run("gpu-a1", "echo up")).strip() == "up"
    (jump_session,) = jump.sessions()
    node.kill()  # the node dies and comes back on the same port
    with pytest.raises(SshError):
        await pool.run("gpu-a1", "true")
    node.restart()
    await asyncio.sleep(pool.connection("gpu-a1").retry_in_s)  # the next attempt is due
    assert (await pool.run("gpu-a1", "echo back")).strip() == "back"
    assert jump.sessions() == [jump_session]  # the jump host's connection was kept

    jump.kill()  # then the jump host does
    jump.restart()
    assert (await pool.run("gpu-a1", "echo again")).strip() == "again"
    assert len(jump.sessions()) == 1
    await pool.close()


async def test_max_sessions_2_runs_six_commands_at_once(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "node", options=["MaxSessions 2"])
    try:
        pool = SshPool([_target(server)])
        outputs = await asyncio.gather(
            *(pool.run("gpu-a1", f"sleep 0.2; echo {i}") for i in range(6))
        )
        assert [o.strip() for o in outputs] == [str(i) for i in range(6)]
        assert pool.connection("gpu-a1").session_limit == 2  # learned from its refusals
        assert len(server.sessions()) == 1  # queued on the one connection, not more
        outputs = await asyncio.gather(*(pool.run("gpu-a1", f"echo {i}") for i in range(6)))
        assert len(outputs) == 6
        await pool.close()
    finally:
        server.stop()


# --- known_hosts as OpenSSH reads it -------------------------------------------------------


async def test_a_hashed_known_hosts_entry_is_trusted_and_a_changed_one_named(
    sshd: Sshd, tmp_path: Path
) -> None:
    hashed = tmp_path / "hashed_known_hosts"
    hashed.write_text(sshd.known_hosts_line + "\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert hashed.read_text().startswith("|1|")
    conn = NodeConnection(_target(sshd, known_hosts=hashed))
    assert (await conn.run("echo hashed")).strip() == "hashed"
    await conn.close()

    stale = asyncssh.generate_private_key("ssh-ed25519")
    hashed.write_text(f"[127.0.0.1]:{sshd.port} {_openssh(stale)}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    with pytest.raises(SshError, match=rf"HOST KEY CHANGED.*{hashed}:1 holds ED25519"):
        await NodeConnection(_target(sshd, known_hosts=hashed)).run("true")


async def test_a_host_certificate_is_trusted_by_its_ca_unless_revoked(
    sshd: Sshd, tmp_path: Path
) -> None:
    ca = tmp_path / "host_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True)
    sshd.certify_host_key(ca)
    ca_line = f"@cert-authority [127.0.0.1]:{sshd.port} {(tmp_path / 'host_ca.pub').read_text()}"
    known = tmp_path / "ca_known_hosts"
    known.write_text(ca_line)  # no line for the host's own key
    conn = NodeConnection(_target(sshd, known_hosts=known))
    assert (await conn.run("echo certified")).strip() == "certified"
    await conn.close()

    known.write_text(ca_line + f"@revoked * {_openssh(sshd.host_key)}\n")
    with pytest.raises(SshError, match=rf"host key refused: REVOKED by {known}:2"):
        await NodeConnection(_target(sshd, known_hosts=known)).run("true")


# --- llmops hosts scan ------------------------------------------------------------------------


async def test_scan_reads_a_nodes_keys_through_its_jump_host_and_trusts_nothing(
    bastion: Bastion,
) -> None:
    node = bastion.nodes["gpu-a1"]
    bastion.trust(bastion.jump.known_hosts_line)  # the node is not known yet
    before = bastion.known_hosts.read_text()
    assert await scan_host_keys(bastion.target("gpu-a1")) == [node.known_hosts_line]
    (hashed,) = await scan_host_keys(bastion.target("gpu-a1"), hashed=True)
    assert hashed.startswith("|1|") and hashed.endswith(node.known_hosts_line.split(" ", 1)[1])
    assert bastion.known_hosts.read_text() == before  # nothing stored
    with pytest.raises(SshError, match="host key refused"):
        await NodeConnection(bastion.target("gpu-a1")).run("true")  # nothing trusted

    bastion.known_hosts.write_text(before + hashed + "\n")  # what the engineer appends
    conn = NodeConnection(bastion.target("gpu-a1"))
    assert (await conn.run("echo trusted")).strip() == "trusted"
    await conn.close()

    bastion.trust(node.known_hosts_line)  # a jump host not trusted: no scan through it
    with pytest.raises(SshError, match=r"^gpu-a1: jump host bastion .*unknown host"):
        await scan_host_keys(bastion.target("gpu-a1"))


def _openssh(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


async def test_aes_gcm_is_preferred_unless_ssh_config_names_its_ciphers(
    sshd: Sshd, tmp_path: Path
) -> None:
    """AES-GCM (in hardware) costs far less CPU per packet than asyncssh's chacha20; a
    Ciphers line in ssh_config is the engineer's choice and is kept."""
    conn = NodeConnection(_target(sshd))
    await conn.run("true")
    assert conn._conn is not None
    assert conn._conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
    await conn.close()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host gpu-a1\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
        "  Ciphers chacha20-poly1305@openssh.com\n"
    )
    conn = NodeConnection(SshTarget("gpu-a1", "gpu-a1", ssh_config=config))
    await conn.run("true")
    assert conn._conn is not None
    assert conn._conn.get_extra_info("send_cipher") == "chacha20-poly1305@openssh.com"
    await conn.close()
