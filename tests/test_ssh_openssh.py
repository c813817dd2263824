"""The SSH backend against a real OpenSSH sshd on 127.0.0.1 (installed by .ci/run)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from backends.gpu import LEGACY_QUERY_FIELDS, QUERY_FIELDS, GpuReader
from backends.ssh import CommandFailed, NodeConnection, SshError, SshPool, SshTarget
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
    assert "H100" in await conn.run("nvidia-smi")
    await conn.close()


async def test_nothing_listening_is_a_one_line_error(tmp_path: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("")
    target = SshTarget("gpu-z9", "127.0.0.1", free_port(), "llmops", known, connect_timeout_s=2)
    with pytest.raises(SshError, match=r"^gpu-z9 \(llmops@127.0.0.1:\d+\): cannot connect"):
        await NodeConnection(target).run("true")


async def test_a_hung_command_times_out_and_the_next_call_reconnects(sshd: Sshd) -> None:
    conn = NodeConnection(_target(sshd))
    with pytest.raises(SshError, match=r"gpu-a1: `sleep 5` timed out after 0.5s"):
        await conn.run("sleep 5", timeout_s=0.5)
    assert conn._conn is None  # the suspect connection was closed, not kept
    assert "H100" in await conn.run("nvidia-smi")
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
