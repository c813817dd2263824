"""The SSH backend against a real OpenSSH sshd on 127.0.0.1 (installed by .ci/run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from backends.gpu import GpuReader
from backends.ssh import NodeConnection, SshError, SshTarget
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


async def test_reconnects_after_the_daemon_comes_back(sshd: Sshd, tmp_path: Path) -> None:
    conn = NodeConnection(_target(sshd))
    assert "H100" in await conn.run("nvidia-smi")
    sshd.stop()
    with pytest.raises(SshError):
        await conn.run("nvidia-smi")
    with pytest.raises(SshError, match="cannot connect"):
        await conn.run("nvidia-smi")
    restarted = start_sshd(sshd.root, FIXTURES / "gpu" / "nvidia-smi-query-load.csv")
    try:
        conn.target = _target(restarted)
        assert "H100" in await conn.run("nvidia-smi")
    finally:
        restarted.stop()
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
