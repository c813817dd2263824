"""The embedded demo fleet, exercised over real SSH and HTTP on 127.0.0.1.

Clients here are the ordinary ones (asyncssh with strict host-key checking, httpx), so what
passes here is what the console's own backends will meet. The simulator's latency model is
tested directly, without servers.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from backends.providers import ProbeTarget, probe
from console.demo import FAULTS, DemoFleet, FaultSpec, parse_fault
from console.demo import fleet as fleet_module
from console.demo.engine_args import EngineArgs
from console.demo.engine_metrics import TTFT_BUCKETS
from console.demo.engine_sim import EngineSim
from console.demo.faults import ActiveFaults
from console.demo.gpu_sim import GpuSim
from console.demo.nvidia_smi import query_gpus
from console.demo.traffic import TrafficGenerator, TrafficProfile, TrafficTarget

FIXTURES = Path(__file__).parent / "fixtures"
CATALOGUE = FIXTURES / "vllm" / "metric-catalogue-v0.33.0-derived.tsv"
GPU_FIXTURE = FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
CAPTURED_TABLE = FIXTURES / "gpu" / "nvidia-smi-and-versions.txt"
CAPTURED_APPS = FIXTURES / "gpu" / "nvidia-smi-apps-load.csv"
SMALL = "meta-llama/Llama-3.1-8B-Instruct"
LARGE = "meta-llama/Llama-3.1-70B-Instruct"
RESTART = "sudo systemctl restart vllm.service"
TTFT_FAMILY = "vllm:time_to_first_token_seconds"
# SSH_FXP_INIT, protocol version 3 (draft-ietf-secsh-filexfer-02): length 5, type 1, version.
SFTP_INIT = b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"
GPU_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoFleet]:
    """A four-node fleet with traffic, shared by the read-only tests."""
    with DemoFleet(tmp_path_factory.mktemp("demo"), deterministic=True) as demo:
        yield demo


@pytest.fixture
def quiet_fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    """A two-node fleet without traffic, for tests that change state."""
    with DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True) as demo:
        yield demo


def connect(fleet: DemoFleet, node: str, known_hosts: Path | None = None) -> object:
    return asyncssh.connect(
        "127.0.0.1",
        port=fleet.ssh_ports[node],
        username="llmops",
        known_hosts=str(known_hosts or fleet.known_hosts_path),
        client_keys=[str(fleet.client_key_path)],
        agent_path=None,
        config=None,
    )


def engine_url(fleet: DemoFleet, node: str) -> str:
    return f"http://127.0.0.1:{fleet.http_ports[node]}"


def chat_body(model: str, content: str = "Reply with the single word: ok", **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def stream_events(client: httpx.AsyncClient, url: str, body: dict) -> list[str]:
    """The ``data:`` payloads of one streamed chat completion."""
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


async def wait_for_health(client: httpx.AsyncClient, url: str, status: int) -> None:
    deadline = time.monotonic() + 5
    while (await client.get(url + "/health")).status_code != status:
        assert time.monotonic() < deadline, f"/health never answered {status}"
        await asyncio.sleep(0.05)


async def streamed_ttft(client: httpx.AsyncClient, url: str, body: dict) -> float:
    start = time.monotonic()
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                return time.monotonic() - start
    raise AssertionError("no content token")


# -- SSH: nvidia-smi, host keys, commands ---------------------------------------------------


async def test_nvidia_smi_prints_the_fixture_format(fleet: DemoFleet) -> None:
    header = GPU_FIXTURE.read_text().splitlines()[0]
    fields = ",".join(h.split(" [")[0] for h in header.split(", "))
    async with connect(fleet, "gpu-a1") as conn:
        result = await conn.run(f"nvidia-smi --query-gpu={fields} --format=csv,nounits")
    assert result.exit_status == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == header
    rows = [dict(zip(header.split(", "), line.split(", "), strict=True)) for line in lines[1:]]
    assert [r["index"] for r in rows] == [str(i) for i in range(8)]
    assert len({r["uuid"] for r in rows}) == 8
    for row in rows:
        assert GPU_UUID.fullmatch(row["uuid"])
        assert row["name"] == "NVIDIA H100 80GB HBM3"
        assert row["fan.speed [%]"] == "[N/A]"
        assert re.fullmatch(r"\d+\.\d\d", row["power.draw [W]"])
        assert row["power.limit [W]"] == "700.00"
        assert float(row["power.draw [W]"]) <= float(row["power.limit [W]"])
        used, free = int(row["memory.used [MiB]"]), int(row["memory.free [MiB]"])
        assert used + free <= int(row["memory.total [MiB]"]) == 81559
        assert 0 <= int(row["utilization.gpu [%]"]) <= 100
        assert int(row["clocks.current.sm [MHz]"]) <= int(row["clocks.max.sm [MHz]"])
        assert re.fullmatch(r"0x[0-9A-F]{16}", row["clocks_event_reasons.active"])


def test_an_idle_gpu_prints_the_captured_idle_row() -> None:
    idle = (FIXTURES / "gpu" / "nvidia-smi-query-idle.csv").read_text().splitlines()
    fields = ",".join(h.split(" [")[0] for h in idle[0].split(", "))
    gpus = GpuSim("gpu-a1", 8, seed=0, rng=None)
    gpus.update(0.5, engine=None)
    lines = query_gpus(fields, "csv,nounits", gpus.gpus)
    expected = dict(zip(idle[0].split(", "), idle[1].split(", "), strict=True))
    for line in lines.splitlines()[1:]:
        row = dict(zip(idle[0].split(", "), line.split(", "), strict=True))
        differ = {k for k in row if row[k] != expected[k]}
        assert differ <= {"index", "uuid", "pci.bus_id", "temperature.gpu"}, differ


async def test_nvidia_smi_formats_units_subsets_and_errors(fleet: DemoFleet) -> None:
    async with connect(fleet, "gpu-a3") as conn:
        units = await conn.run("nvidia-smi --query-gpu=memory.used,index,power.draw --format=csv")
        bare = await conn.run("nvidia-smi --query-gpu=index,pstate --format=csv,noheader,nounits")
        unknown = await conn.run("nvidia-smi --query-gpu=index,gpu.magic --format=csv")
        legacy = await conn.run(
            "nvidia-smi --query-gpu=index,clocks_throttle_reasons.active --format=csv,noheader"
        )
        missing = await conn.run("ls -l /etc")
    first = units.stdout.splitlines()
    assert first[0] == "memory.used [MiB], index, power.draw [W]"
    assert re.fullmatch(r"\d+ MiB, 0, \d+\.\d\d W", first[1])
    assert bare.stdout.splitlines() == [f"{i}, P0" for i in range(8)]
    assert unknown.exit_status == 2
    assert unknown.stderr == ""
    assert (
        'Field "gpu.magic" is not a valid field to query.' in unknown.stdout
    )  # on stdout, as the real one
    assert re.fullmatch(r"0, 0x[0-9A-F]{16}", legacy.stdout.splitlines()[0])
    assert missing.exit_status == 127
    assert missing.stderr == "bash: ls: command not found\n"


async def test_host_keys_are_checked_strictly(fleet: DemoFleet, tmp_path: Path) -> None:
    lines = fleet.known_hosts_path.read_text().splitlines()
    assert len(lines) == 5  # four nodes, then the gateway
    ports = [*(fleet.ssh_ports[node] for node in fleet.node_names), fleet.gateway_ssh_port]
    for port, line in zip(ports, lines, strict=True):
        assert re.fullmatch(rf"\[127\.0\.0\.1\]:{port} ssh-ed25519 \S+", line)
    assert len({line.split()[2] for line in lines}) == 5  # each host its own key
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(fleet, "gpu-a1", known_hosts=empty):
            pass


async def test_only_the_demo_client_key_gets_in(fleet: DemoFleet, tmp_path: Path) -> None:
    assert stat.S_IMODE(fleet.client_key_path.stat().st_mode) == 0o600
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(
            "127.0.0.1",
            port=fleet.ssh_ports["gpu-a1"],
            username="llmops",
            known_hosts=str(fleet.known_hosts_path),
            client_keys=[stranger],
            agent_path=None,
            config=None,
        ):
            pass


def test_restart_keeps_host_keys(tmp_path: Path) -> None:
    def keys() -> list[str]:
        return [line.split()[2] for line in (tmp_path / "known_hosts").read_text().splitlines()]

    with DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True):
        before = keys()
    with DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True) as again:
        assert keys() == before
        again.stop()
    again.stop()  # idempotent


def openssh_options(fleet: DemoFleet, node: str) -> list[str]:
    """Options for the real OpenSSH client tools: the demo's known_hosts and key, strictly."""
    return [
        "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={fleet.known_hosts_path}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-i", str(fleet.client_key_path),
    ]  # fmt: skip


def openssh(fleet: DemoFleet, node: str, command: str) -> subprocess.CompletedProcess[str]:
    port = str(fleet.ssh_ports[node])
    argv = ["ssh", "-p", port, *openssh_options(fleet, node), "llmops@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


async def test_nvidia_smi_table_is_the_captured_layout(fleet: DemoFleet) -> None:
    captured = CAPTURED_TABLE.read_text().splitlines()
    start = next(i for i, line in enumerate(captured) if line.startswith("+---"))
    captured = captured[start - 1 : captured.index("done")]  # the table, from its date line
    result = openssh(fleet, "gpu-a1", "nvidia-smi")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) == 91 for line in lines[1:] if line)
    assert lines[1:8] == captured[1:8]  # banner and headings, versions included
    processes_at, captured_at = lines.index(""), captured.index("")
    assert lines[processes_at : processes_at + 6] == captured[captured_at : captured_at + 6]
    assert lines[-1] == captured[-1]
    gpu_rows = [line for line in lines if re.match(r"\|\s+\d+  NVIDIA", line)]
    assert len(gpu_rows) == 8
    for index, row in enumerate(gpu_rows):  # the captured row; only index and bus id differ
        row = re.sub(r"[0-9A-F]{8}:[0-9A-F]{2}:00\.0", "00000000:00:06.0", row)
        assert row == captured[8].replace("|   0  ", f"|   {index}  ")
    readings = lines[lines.index(gpu_rows[0]) + 1]
    assert re.fullmatch(
        r"\| N/A +\d+C +P0 +\d+W /  700W \| +\d+MiB /  81559MiB \| +\d+% +Default \|", readings
    )
    processes = [line for line in lines if re.match(r"\|\s+\d+  N/A  N/A", line)]
    assert len(processes) == 8  # tensor parallel 8: one vLLM worker per GPU
    with_memory = re.compile(r"\|\s+(\d+)  N/A  N/A\s+(\d+)\s+C   python3\s+(\d+)MiB \|")
    assert all(with_memory.fullmatch(line) for line in processes)


async def test_nvidia_smi_lists_queries_and_compute_apps(fleet: DemoFleet) -> None:
    apps_capture = CAPTURED_APPS.read_text().splitlines()
    async with connect(fleet, "gpu-a3") as conn:
        listed = await conn.run("nvidia-smi -L")
        details = await conn.run("nvidia-smi -q -i 0")
        uuids = await conn.run("nvidia-smi --query-gpu=uuid --format=csv,noheader")
        apps = await conn.run(
            "nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid "
            "--format=csv,nounits"
        )
        units = await conn.run(
            "nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader"
        )
        bad = await conn.run("nvidia-smi --query-compute-apps=pid,colour --format=csv")
    assert listed.exit_status == details.exit_status == apps.exit_status == 0
    gpus = uuids.stdout.split()
    assert listed.stdout.splitlines() == [
        f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: {uuid})" for i, uuid in enumerate(gpus)
    ]
    fields = {}
    for line in details.stdout.splitlines():
        name, colon, value = line.partition(" : ")
        if colon:
            fields.setdefault(name.strip(), value)
    assert fields["Product Name"] == "NVIDIA H100 80GB HBM3"
    assert fields["GPU UUID"] == gpus[0]
    assert fields["Attached GPUs"] == "8"
    assert fields["Driver Version"] == "580.159.04"
    assert re.fullmatch(r"\d+ MiB", fields["Used"])
    rows = apps.stdout.splitlines()
    assert rows[0] == apps_capture[0]
    assert len(rows) == 9
    for row in rows[1:]:
        pid, name, memory, uuid = row.split(", ")
        assert pid.isdigit() and name == "python3" and memory.isdigit() and uuid in gpus
    assert re.fullmatch(r"\d+, \d+ MiB", units.stdout.splitlines()[0])
    assert bad.exit_status == 2
    assert 'Field "colour" is not a valid field to query.' in bad.stdout


async def test_systemctl_status_and_journalctl_since(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    async with connect(fleet, "gpu-a1") as conn:
        running = await conn.run("systemctl status vllm.service")
        unknown = await conn.run("systemctl status nginx")
        await asyncio.sleep(1.1)
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        assert (await conn.run("sudo systemctl stop vllm.service")).exit_status == 0
        stopped = await conn.run("systemctl status vllm")
        recent = await conn.run(f"journalctl -u vllm.service --since '{since}' --no-pager")
        everything = await conn.run("journalctl -u vllm.service --no-pager")
        last = await conn.run("journalctl -u vllm -n 1")
        relative = await conn.run("journalctl -u vllm.service --since '-10min'")
        nothing = await conn.run("journalctl -u vllm.service --since tomorrow")
        bad = await conn.run("journalctl -u vllm --since 'last tuesday-ish'")
    assert running.exit_status == 0
    head = running.stdout.splitlines()
    assert head[0] == "● vllm.service - vLLM OpenAI-compatible server"
    assert head[2].startswith("     Active: active (running) since ")
    assert "Main PID: " in running.stdout
    assert unknown.exit_status == 4
    assert unknown.stderr == "Unit nginx.service could not be found.\n"
    assert stopped.exit_status == 3
    assert stopped.stdout.startswith("○ vllm.service")
    assert "Active: inactive (dead) since " in stopped.stdout
    assert recent.stdout.splitlines() == everything.stdout.splitlines()[-2:]
    assert "Stopped vllm.service" in recent.stdout
    assert "Starting vLLM API server" not in recent.stdout
    assert last.stdout.splitlines() == everything.stdout.splitlines()[-1:]
    assert relative.stdout == everything.stdout
    assert nothing.stdout == "-- No entries --\n"
    assert bad.exit_status == 1
    assert bad.stderr.startswith("Failed to parse timestamp")


async def test_journalctl_follows_until_the_channel_closes(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    async with connect(fleet, "gpu-a2") as conn:
        follow = await conn.create_process("journalctl -u vllm.service -f")
        first = await asyncio.wait_for(follow.stdout.readline(), 5)
        assert (await conn.run("systemctl restart vllm")).exit_status == 0
        lines = []
        while "Started vllm.service" not in "".join(lines[-1:]):
            lines.append(await asyncio.wait_for(follow.stdout.readline(), 5))
        follow.stdin.write_eof()  # as a client going away: the follow ends
        await asyncio.wait_for(follow.wait_closed(), 5)
        assert "Stopping vllm.service" in "".join(lines)
        assert "Started vllm.service" in first
    argv = ["ssh", "-p", str(fleet.ssh_ports["gpu-a2"]), *openssh_options(fleet, "gpu-a2")]
    with subprocess.Popen(
        [*argv, "llmops@127.0.0.1", "journalctl -fu vllm"], stdout=subprocess.PIPE, text=True
    ) as client:
        assert client.stdout is not None
        assert "vllm" in client.stdout.readline()
        assert client.poll() is None  # still following
        client.terminate()


async def test_first_commands_an_engineer_types(fleet: DemoFleet) -> None:
    async with connect(fleet, "gpu-a2") as conn:
        hostname = await conn.run("hostname")
        uptime = await conn.run("uptime")
        free = await conn.run("free -m")
        df = await conn.run("df -h")
        args = await conn.run("cat /etc/vllm/args.yaml")
        missing = await conn.run("cat /etc/vllm/missing.yaml")
        async with conn.start_sftp_client() as sftp, sftp.open("/etc/vllm/args.yaml") as f:
            served = await f.read()
    assert hostname.stdout == "gpu-a2\n"
    assert re.fullmatch(
        r" \d\d:\d\d:\d\d up .+,  1 user,  load average: [\d.]+, [\d.]+, [\d.]+\n",
        uptime.stdout,
    )
    header, mem, swap = free.stdout.splitlines()
    assert header.split() == ["total", "used", "free", "shared", "buff/cache", "available"]
    total, used, available = (int(mem.split()[i]) for i in (1, 2, 6))
    assert mem.startswith("Mem:") and swap.startswith("Swap:")
    assert used < available < total
    assert df.stdout.splitlines()[0].split() == [
        "Filesystem", "Size", "Used", "Avail", "Use%", "Mounted", "on"
    ]  # fmt: skip
    assert re.search(r"\s\d+%\s/$", df.stdout, re.MULTILINE)
    assert args.exit_status == 0 and args.stdout == served
    assert yaml.safe_load(args.stdout)["model"] == SMALL
    assert missing.exit_status == 1
    assert missing.stderr == "cat: /etc/vllm/missing.yaml: No such file or directory\n"


@pytest.mark.parametrize(
    "command",
    [
        "nvidia-smi | head -n 5",
        "nvidia-smi; uptime",
        "systemctl restart vllm && journalctl -u vllm -n 5",
        "nvidia-smi > /tmp/gpus.txt",
        "echo $(hostname)",
        "journalctl -u vllm 2>&1",
    ],
)
async def test_shell_syntax_gets_a_clear_error(fleet: DemoFleet, command: str) -> None:
    async with connect(fleet, "gpu-a4") as conn:
        result = await conn.run(command)
    assert result.exit_status != 0
    assert result.stdout == ""
    assert result.stderr.startswith("the demo node runs single commands")
    assert "nvidia-smi -h" not in result.stderr


async def test_quoted_operators_are_arguments_not_syntax(fleet: DemoFleet) -> None:
    async with connect(fleet, "gpu-a4") as conn:
        single = await conn.run("journalctl -u vllm --since '-1 s ago|x'")
        double = await conn.run('journalctl -u vllm --since "today; x > y"')
        substituted = await conn.run('journalctl -u vllm --since "$(date)"')
    assert single.stderr.startswith("Failed to parse timestamp")
    assert double.stderr.startswith("Failed to parse timestamp")
    assert substituted.stderr.startswith("the demo node runs single commands")


def test_scp_with_the_openssh_client_exits_0(quiet_fleet: DemoFleet, tmp_path: Path) -> None:
    fleet = quiet_fleet
    port = str(fleet.ssh_ports["gpu-a1"])
    options = ["-P", port, *openssh_options(fleet, "gpu-a1")]
    remote = "llmops@127.0.0.1:/etc/vllm/args.yaml"
    sftp_mode = subprocess.run(
        ["scp", "-s", *options, remote, str(tmp_path / "sftp.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    legacy = subprocess.run(
        ["scp", "-O", *options, remote, str(tmp_path / "legacy.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    edited = (tmp_path / "sftp.yaml").read_text().replace("max-num-seqs: 256", "max-num-seqs: 64")
    (tmp_path / "edited.yaml").write_text(edited)
    upload = subprocess.run(
        ["scp", "-s", *options, str(tmp_path / "edited.yaml"), remote],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    missing = subprocess.run(
        ["scp", "-s", *options, remote + ".nope", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert sftp_mode.returncode == 0, sftp_mode.stderr
    assert legacy.returncode == 0, legacy.stderr
    assert upload.returncode == 0, upload.stderr
    assert (tmp_path / "legacy.yaml").read_text() == (tmp_path / "sftp.yaml").read_text()
    assert "max-num-seqs: 64" in openssh(fleet, "gpu-a1", "cat /etc/vllm/args.yaml").stdout
    assert missing.returncode != 0
    assert "No such file" in missing.stderr


async def test_scp_and_sftp_with_asyncssh_end_with_status_0(
    quiet_fleet: DemoFleet, tmp_path: Path
) -> None:
    fleet = quiet_fleet
    async with connect(fleet, "gpu-a2") as conn:
        await asyncssh.scp((conn, "/etc/vllm/args.yaml"), tmp_path / "args.yaml")
        await asyncssh.scp(tmp_path / "args.yaml", (conn, "/etc/vllm/copy.yaml"))
        sftp = await conn.create_process(subsystem="sftp", encoding=None)
        sftp.stdin.write(SFTP_INIT)
        version = await asyncio.wait_for(sftp.stdout.readexactly(9), 5)
        sftp.stdin.write_eof()  # a client that is done: the subsystem exits
        ended = await asyncio.wait_for(sftp.wait(), 5)
        copy = await conn.run("cat /etc/vllm/copy.yaml")
    assert version[4] == 2  # SSH_FXP_VERSION
    assert ended.exit_status == 0
    assert copy.stdout == (tmp_path / "args.yaml").read_text()


# -- the fleet's own upkeep --------------------------------------------------------------------


async def test_the_fleet_frees_what_each_ssh_exec_leaves_in_cycles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh leaves a reference cycle per exec; the fleet must not wait for CPython's rare
    full collections (in the console's large process: an hour of polls) to free them."""

    def server_processes() -> int:
        return sum(type(o).__name__ == "SSHServerProcess" for o in gc.get_objects())

    monkeypatch.setattr(fleet_module, "COLLECT_EVERY_S", 3.0)
    with DemoFleet(tmp_path, nodes=1, traffic=False, deterministic=True) as fleet:
        gc.disable()  # stands for a process whose full collections are far apart
        try:
            async with connect(fleet, "gpu-a1") as conn:
                for _ in range(20):
                    assert (await conn.run("hostname")).exit_status == 0
            left = server_processes()
            await asyncio.sleep(4)
            after = server_processes()
        finally:
            gc.enable()
    assert left >= 20  # the cycles are there: nothing else frees them
    assert after == 0


def test_a_start_that_times_out_gives_up_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_module, "_CALL_TIMEOUT_S", 0.001)
    stuck = DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True)
    with pytest.raises(TimeoutError):
        stuck.start()  # before the fix: joined a thread that never ended
    monkeypatch.undo()
    with DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True) as fleet:
        assert openssh(fleet, "gpu-a2", "hostname").stdout == "gpu-a2\n"


# -- engine arguments over SFTP, restart -------------------------------------------------------


async def test_sftp_edit_and_restart_changes_the_engine(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    url = engine_url(fleet, "gpu-a1")
    async with connect(fleet, "gpu-a1") as conn, httpx.AsyncClient() as client:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open("/etc/vllm/args.yaml") as f:
                args = yaml.safe_load(await f.read())
            assert args["model"] == SMALL
            assert args["max-num-batched-tokens"] == 8192
            args["max-num-batched-tokens"] = 2048
            async with sftp.open("/etc/vllm/args.yaml", "w") as f:
                await f.write(yaml.safe_dump(args))
        restart = await conn.run(RESTART)
        assert restart.exit_status == 0
        assert (await conn.run("systemctl is-active vllm.service")).stdout == "activating\n"
        assert (await client.get(url + "/health")).status_code == 503
        await wait_for_health(client, url, 200)
        assert (await conn.run("systemctl is-active vllm.service")).stdout == "active\n"
    engine_args = fleet.engine_args("gpu-a1")
    assert engine_args is not None
    assert engine_args.max_num_batched_tokens == 2048


async def test_malformed_args_keep_the_engine_down_until_fixed(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    url = engine_url(fleet, "gpu-a2")
    async with connect(fleet, "gpu-a2") as conn, httpx.AsyncClient() as client:
        async with conn.start_sftp_client() as sftp:
            async with sftp.open("/etc/vllm/args.yaml") as f:
                good = await f.read()
            async with sftp.open("/etc/vllm/args.yaml", "w") as f:
                await f.write(good + "max-num-seqs: [\n")
            assert (await conn.run("systemctl restart vllm.service")).exit_status == 0
            await asyncio.sleep(1.2)  # two boot attempts in deterministic mode
            assert (await client.get(url + "/health")).status_code == 503
            assert fleet.engine_args("gpu-a2") is None
            journal = await conn.run("journalctl -u vllm.service -n 20 --no-pager")
            assert "Unable to read config file /etc/vllm/args.yaml" in journal.stdout
            status = await conn.run("systemctl status vllm.service")
            assert status.exit_status == 3
            assert "Active: activating (auto-restart) (Result: exit-code)" in status.stdout
            assert status.stdout.splitlines()[-1] == journal.stdout.splitlines()[-1]
            async with sftp.open("/etc/vllm/args.yaml", "w") as f:
                await f.write(good)
        await wait_for_health(client, url, 200)


# -- the vLLM HTTP surface ---------------------------------------------------------------------


def _catalogue() -> list[dict[str, str]]:
    lines = [line for line in CATALOGUE.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


async def test_metrics_honour_the_name_filter_as_vllm_does(fleet: DemoFleet) -> None:
    """?name[]=SAMPLE (prometheus_client's exposition, which vLLM serves): only those
    samples, with their families' HELP and TYPE lines; what the console asks for."""
    names = ["vllm:num_requests_running", "vllm:e2e_request_latency_seconds_bucket"]
    async with httpx.AsyncClient() as client:
        url = engine_url(fleet, "gpu-a1") + "/metrics"
        full = (await client.get(url)).text
        asked = (await client.get(url, params={"name[]": names})).text
    samples = {s.name for f in text_string_to_metric_families(asked) for s in f.samples}
    assert samples == set(names)
    assert "# TYPE vllm:e2e_request_latency_seconds histogram" in asked
    assert len(asked) < len(full) / 3


async def test_metrics_cover_the_vllm_catalogue(fleet: DemoFleet) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(engine_url(fleet, "gpu-a1") + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    required = [row for row in _catalogue() if not row["condition"]]
    assert len(required) > 30
    for row in required:
        family = families[row["family"]]
        assert family.type == row["type"], row["family"]
        if not family.samples:
            assert row["family"] == "vllm:admission_rejections"  # no queue limit configured
            continue
        expected = set(row["labels"].split(","))
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == expected, sample
            if "engine" in expected:
                assert sample.labels["engine"] == "0"
            assert sample.labels["model_name"] == SMALL
        exposed = {s.name for s in family.samples}
        assert exposed == set(row["exposition_names"].split(",")), row["family"]
        if row["type"] in ("counter", "histogram"):  # as prometheus_client exposes them
            assert f"{row['family']}_created" in families
    ttft = families[TTFT_FAMILY]
    bounds = [s.labels["le"] for s in ttft.samples if s.name.endswith("_bucket")]
    assert bounds == [str(b) for b in TTFT_BUCKETS] + ["+Inf"]
    assert 'vllm:num_requests_running{engine="0",model_name=' in response.text


async def test_version_models_and_unknown_model(fleet: DemoFleet) -> None:
    url = engine_url(fleet, "gpu-a3")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/health")).status_code == 200
        assert (await client.get(url + "/version")).json() == {"version": "0.33.0"}
        models = (await client.get(url + "/v1/models")).json()
        missing = await client.post(url + "/v1/chat/completions", json=chat_body("gpt-5"))
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == card["root"] == LARGE
    assert card["max_model_len"] == 131072
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "The model `gpt-5` does not exist."


async def test_streaming_chat_sends_role_content_usage_done(fleet: DemoFleet) -> None:
    url = engine_url(fleet, "gpu-a2") + "/v1/chat/completions"
    body = chat_body(SMALL, max_tokens=16, stream=True, stream_options={"include_usage": True})
    start = time.monotonic()
    async with httpx.AsyncClient() as client:
        events = await stream_events(client, url, body)
        plain = (await client.post(url, json=chat_body(SMALL, max_tokens=16))).json()
    assert time.monotonic() - start < 2
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == SMALL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = [c["choices"][0] for c in chunks[1:-1]]
    assert tokens and all(t["delta"]["content"] for t in tokens)
    # As vLLM does: the finish reason rides on the last token, not on an empty chunk after it.
    assert [t["finish_reason"] for t in tokens[:-1]] == [None] * (len(tokens) - 1)
    assert tokens[-1]["finish_reason"] in ("stop", "length")
    assert "stop_reason" in tokens[-1]
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(tokens)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    text = "".join(t["delta"]["content"] for t in tokens)
    assert plain["object"] == "chat.completion"
    assert plain["choices"][0]["message"]["content"] == text
    assert plain["usage"]["completion_tokens"] == len(tokens)


# -- backup provider ---------------------------------------------------------------------------


def backup_endpoint(fleet: DemoFleet) -> dict:
    config = yaml.safe_load(fleet.config_path.read_text())
    return next(e for e in config["endpoints"] if e["name"] == "chat-backup")


async def test_backup_provider_needs_its_key(fleet: DemoFleet) -> None:
    backup = backup_endpoint(fleet)
    key = os.environ[backup["api_key_env"]]
    url = backup["base_url"]
    body = chat_body(backup["model"], stream=True, stream_options={"include_usage": True})
    async with httpx.AsyncClient() as client:
        anonymous = await client.get(url + "/models")
        wrong = await client.get(url + "/models", headers={"Authorization": "Bearer sk-wrong"})
        client.headers["Authorization"] = f"Bearer {key}"
        models = await client.get(url + "/models")
        response = await client.post(url + "/chat/completions", json=chat_body(backup["model"]))
        events = await stream_events(client, url + "/chat/completions", body)
    assert anonymous.status_code == wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert models.status_code == 200
    assert backup["model"] in [m["id"] for m in models.json()["data"]]
    assert response.status_code == 200
    assert int(response.headers["x-ratelimit-remaining-requests"]) > 0
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    # OpenAI's shape, unlike vLLM's: "usage": null on every chunk, the finish on an empty one.
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def backup_probe(fleet: DemoFleet, model: str) -> ProbeTarget:
    backup = backup_endpoint(fleet)
    return ProbeTarget(
        endpoint="chat-backup",
        kind="openai",
        base_url=backup["base_url"],
        model=model,
        prompt="Reply with the single word: ok",
        max_tokens=8,
        timeout_s=10,
        api_key_env=backup["api_key_env"],
    )


async def test_backup_provider_answers_an_alias_with_a_dated_model(
    quiet_fleet: DemoFleet,
) -> None:
    fleet = quiet_fleet
    assert fleet.targets("model-version-change")[-1] == "backup-provider"
    async with httpx.AsyncClient() as client:
        alias = await probe(client, backup_probe(fleet, "gpt-4o-mini"))
        dated = await probe(client, backup_probe(fleet, "gpt-4o-mini-2024-07-18"))
        description = fleet.inject("model-version-change", "backup-provider")
        moved = await probe(client, backup_probe(fleet, "gpt-4o-mini"))
        pinned = await probe(client, backup_probe(fleet, "gpt-4o-mini-2024-07-18"))
        fleet.heal()
        healed = await probe(client, backup_probe(fleet, "gpt-4o-mini"))
    assert alias.ok and alias.model == "gpt-4o-mini-2024-07-18"
    assert dated.ok and dated.model == "gpt-4o-mini-2024-07-18"
    assert moved.ok and moved.model is not None
    assert moved.model.startswith("gpt-4o-mini-20") and moved.model != alias.model
    assert moved.model in description
    assert pinned.model == "gpt-4o-mini-2024-07-18"  # a pinned snapshot does not move
    assert healed.model == "gpt-4o-mini-2024-07-18"


# -- faults ------------------------------------------------------------------------------------


async def test_node_down_refuses_both_ports_until_healed(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    ssh_port, http_port = fleet.ssh_ports["gpu-a2"], fleet.http_ports["gpu-a2"]
    async with connect(fleet, "gpu-a2") as conn:
        description = fleet.inject("node-down", "gpu-a2")
        assert "gpu-a2" in description
        with pytest.raises((asyncssh.Error, OSError)):  # the open connection was dropped
            await conn.run("systemctl is-active vllm.service", check=True)
    with pytest.raises(OSError):
        async with connect(fleet, "gpu-a2"):
            pass
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(engine_url(fleet, "gpu-a2") + "/health")
        fleet.heal()
        assert (fleet.ssh_ports["gpu-a2"], fleet.http_ports["gpu-a2"]) == (ssh_port, http_port)
        await wait_for_health(client, engine_url(fleet, "gpu-a2"), 200)
    async with connect(fleet, "gpu-a2") as conn:
        assert (await conn.run("systemctl is-active vllm.service")).stdout == "active\n"


async def test_provider_faults_answer_429_and_503(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    backup = backup_endpoint(fleet)
    headers = {"Authorization": f"Bearer {os.environ[backup['api_key_env']]}"}
    url = backup["base_url"] + "/chat/completions"
    body = chat_body(backup["model"])
    assert fleet.targets("provider-429")[:2] == ["primary-api", "backup-provider"]
    async with httpx.AsyncClient(headers=headers) as client:
        fleet.inject("provider-429", "backup-provider")
        limited = await client.post(url, json=body)
        fleet.heal()
        fleet.inject("provider-5xx", "backup-provider", duration_s=0.3)
        failing = await client.post(url, json=body)
        node_failing = fleet.inject("provider-5xx", "gpu-a1")
        on_node = await client.post(
            engine_url(fleet, "gpu-a1") + "/v1/chat/completions", json=chat_body(SMALL)
        )
        await asyncio.sleep(0.5)
        recovered = await client.post(url, json=body)
        fleet.heal()
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "20"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert failing.status_code == 503
    assert failing.json()["error"]["type"] == "server_error"
    assert "gpu-a1" in node_failing
    assert on_node.status_code == 503
    assert recovered.status_code == 200  # the timed fault ended by itself


async def test_latency_spike_slows_real_requests_and_metrics(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    url = engine_url(fleet, "gpu-a1")
    long_prompt = "word " * 8000  # a long prompt: prefill dominates TTFT
    body = chat_body(SMALL, long_prompt, max_tokens=2, stream=True)

    async def ttft_sum() -> float:
        text = (await client.get(url + "/metrics")).text
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == TTFT_FAMILY]
        return next(s.value for s in family.samples if s.name == TTFT_FAMILY + "_sum")

    async with httpx.AsyncClient() as client:
        before = await streamed_ttft(client, url + "/v1/chat/completions", body)
        sum_before = await ttft_sum()
        fleet.inject("latency-spike", "gpu-a1")
        during = await streamed_ttft(client, url + "/v1/chat/completions", body)
        # The engine records a request's TTFT as the request ends, a moment after its stream.
        deadline = asyncio.get_running_loop().time() + 5
        while (sum_during := await ttft_sum()) == sum_before:
            assert asyncio.get_running_loop().time() < deadline, "TTFT never recorded"
            await asyncio.sleep(0.05)
        fleet.heal()
    assert during > 2 * before
    assert sum_during - sum_before > 2 * sum_before


async def test_model_version_change_shows_in_models_and_responses(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    url = engine_url(fleet, "gpu-a1")
    async with httpx.AsyncClient() as client:
        description = fleet.inject("model-version-change")
        await wait_for_health(client, url, 200)
        ids = [m["id"] for m in (await client.get(url + "/v1/models")).json()["data"]]
        reply = await client.post(url + "/v1/chat/completions", json=chat_body(SMALL))
        fleet.heal()
        await wait_for_health(client, url, 200)
        healed = [m["id"] for m in (await client.get(url + "/v1/models")).json()["data"]]
    (new_name,) = [i for i in ids if i != SMALL]
    assert new_name.startswith(SMALL + "@")
    assert new_name in description
    assert SMALL in ids  # the old name still answers, so clients keep working
    assert reply.json()["model"] == new_name
    assert healed == [SMALL]


async def test_token_blowup_runs_completions_to_max_tokens(quiet_fleet: DemoFleet) -> None:
    fleet = quiet_fleet
    url = engine_url(fleet, "gpu-a1") + "/v1/chat/completions"
    body = chat_body(SMALL, max_tokens=64)
    async with httpx.AsyncClient() as client:
        normal = (await client.post(url, json=body)).json()
        fleet.inject("token-blowup", "gpu-a1", duration_s=30)
        blown = (await client.post(url, json=body)).json()
        fleet.heal()
    assert normal["usage"]["completion_tokens"] < 32
    assert blown["usage"]["completion_tokens"] == 64
    assert blown["choices"][0]["finish_reason"] == "length"


def test_inject_rejects_unknown_faults_and_targets(quiet_fleet: DemoFleet) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        quiet_fleet.inject("meteor-strike")
    with pytest.raises(ValueError, match="unknown target"):
        quiet_fleet.inject("node-down", "gpu-z9")
    with pytest.raises(ValueError, match="unknown target"):
        quiet_fleet.inject("latency-spike", "backup-provider")


async def test_scheduled_fault_fires_after_start(tmp_path: Path) -> None:
    spec = parse_fault("provider-5xx:gpu-a1@0.3+0.5")
    with DemoFleet(tmp_path, nodes=1, traffic=False, deterministic=True, faults=[spec]) as fleet:
        url = engine_url(fleet, "gpu-a1") + "/v1/chat/completions"
        async with httpx.AsyncClient() as client:
            statuses = []
            for _ in range(14):
                statuses.append((await client.post(url, json=chat_body(SMALL))).status_code)
                await asyncio.sleep(0.1)
    assert statuses[0] == 200
    assert 503 in statuses
    assert statuses[-1] == 200


# -- the latency model -------------------------------------------------------------------------


def _p95(registry: CollectorRegistry, family: str) -> float:
    """The upper bound of the bucket holding the 95th percentile."""
    (metric,) = [m for m in registry.collect() if m.name == family]
    buckets = [(float(s.labels["le"]), s.value) for s in metric.samples if s.name[-7:] == "_bucket"]
    return next(le for le, count in buckets if count >= 0.95 * buckets[-1][1])


def _simulate(max_num_batched_tokens: int) -> tuple[float, float]:
    """ITL p95 and mean TTFT after 60 s of steady long-prompt load; no KV-cache pressure."""
    args = EngineArgs(SMALL, (SMALL,), "r", max_num_batched_tokens=max_num_batched_tokens)
    faults = ActiveFaults()
    engine = EngineSim(args, faults)
    traffic = TrafficGenerator(TrafficProfile(4.0, 8000, 180, 1024, 0.0), 1, rng=None)
    for _ in range(120):
        traffic.tick(0.5, [TrafficTarget("gpu-a1", engine, faults)])
        engine.advance(0.5)
    assert engine.kv_usage < 0.8 and not engine.waiting
    registry = engine.metrics.registry
    labels = {"model_name": SMALL, "engine": "0"}
    ttft_sum = registry.get_sample_value(TTFT_FAMILY + "_sum", labels)
    ttft_count = registry.get_sample_value(TTFT_FAMILY + "_count", labels)
    return _p95(registry, "vllm:inter_token_latency_seconds"), ttft_sum / ttft_count


def test_smaller_batched_tokens_lower_itl_and_raise_ttft_under_load() -> None:
    itl_large, ttft_large = _simulate(8192)
    itl_small, ttft_small = _simulate(1024)
    assert itl_small < itl_large
    assert ttft_small > ttft_large


# -- parse_fault and config --------------------------------------------------------------------


def test_parse_fault_accepts_the_documented_forms() -> None:
    assert parse_fault("node-down:gpu-a2@30+60") == FaultSpec("node-down", "gpu-a2", 30.0, 60.0)
    assert parse_fault("latency-spike@10") == FaultSpec("latency-spike", None, 10.0, None)
    assert parse_fault(" provider-429:backup-provider@1.5 ").at_s == 1.5
    assert set(FAULTS) == {
        "latency-spike",
        "node-down",
        "provider-5xx",
        "provider-429",
        "model-version-change",
        "token-blowup",
        "long-prompts",
        "bad-revision",
        "bad-canary",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bad fault"),
        ("node-down", "bad fault"),
        ("node-down@soon", "bad fault"),
        ("node-down@-5", "bad fault"),
        ("node-down@5+0", "duration"),
        ("meteor-strike@5", "unknown fault"),
    ],
)
def test_parse_fault_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse_fault(text)
    assert "\n" not in str(error.value)


def test_config_points_at_the_fleet(fleet: DemoFleet) -> None:
    config = yaml.safe_load(fleet.config_path.read_text())
    assert config["environment"] == "demo"
    assert config["store"] == str(fleet.workdir / "demo.db")
    assert config["ssh"]["known_hosts"] == str(fleet.known_hosts_path)
    assert config["ssh"]["identity_files"] == [str(fleet.client_key_path)]
    nodes = {n["name"]: n for n in config["nodes"]}
    assert list(nodes) == fleet.node_names == ["gpu-a1", "gpu-a2", "gpu-a3", "gpu-a4"]
    assert nodes["gpu-a1"]["port"] == fleet.ssh_ports["gpu-a1"]
    assert nodes["gpu-a1"]["engine"]["url"] == engine_url(fleet, "gpu-a1")
    assert nodes["gpu-a1"]["engine"]["restart_command"] == RESTART
    endpoints = {e["name"]: e for e in config["endpoints"]}
    assert endpoints["chat-primary"]["nodes"] == ["gpu-a1", "gpu-a2"]
    assert endpoints["chat-large"]["nodes"] == ["gpu-a3", "gpu-a4"]
    assert endpoints["chat-large"]["model"] == LARGE
    assert endpoints["chat-backup"]["api_key_env"] == "LLMOPS_DEMO_BACKUP_KEY"
    assert os.environ["LLMOPS_DEMO_BACKUP_KEY"] not in fleet.config_path.read_text()
