"""The ``llmops`` command as a user runs it: a subprocess, its output and its exit status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.store import Store
from tests.conftest import FIXTURES
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port

ROOT = Path(__file__).parent.parent


def llmops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_config_check_accepts_the_example() -> None:
    result = llmops("config", "check", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config.example.yaml: ok"


def test_config_check_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("environment: prod\nnodes:\n  - name: a\n    hots: x\n    prot: 22\n")
    result = llmops("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert f"{path}:4: nodes[0].hots: unknown key (did you mean 'host'?)" in lines
    assert any(line.startswith(f"{path}:5: nodes[0].prot: unknown key") for line in lines)
    assert "Traceback" not in result.stderr


def test_running_with_a_broken_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("environment: prod\nnodes: []\nendpoints:\n  - name: x\n    api_key: sk-abc\n")
    result = llmops("--config", str(path))
    assert result.returncode == 2
    assert "literal secrets are not allowed" in result.stderr
    assert "sk-abc" not in result.stderr
    assert "Traceback" not in result.stderr


def test_no_config_anywhere_points_at_the_example_and_the_demo(tmp_path: Path) -> None:
    result = llmops("status", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "config.example.yaml" in result.stderr
    assert "llmops demo" in result.stderr


def test_faults_need_the_demo() -> None:
    result = llmops("status", "--fault", "node-down@1", "--config", "config.example.yaml")
    assert result.returncode == 2
    assert "add --demo" in result.stderr


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--fault", "meteor-strike@5"], "llmops: --fault: "),
        (["--fault", "node-down:gpu-z9@5"], "llmops: demo fleet: "),
        (["--nodes", "0"], "llmops: demo fleet: nodes must be between 1 and 64"),
        (["--nodes", "5000"], "llmops: demo fleet: nodes must be between 1 and 64"),
        (["--gpus", "9"], "llmops: demo fleet: gpus_per_node must be between 1 and 8"),
    ],
)
def test_bad_demo_options_are_usage_errors(args: list[str], start: str, tmp_path: Path) -> None:
    result = llmops("status", "--demo", *args, env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.startswith(start)
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no demo folder (with its private key) left behind


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_status_demo_json_has_every_node_and_endpoint_with_live_figures() -> None:
    result = llmops("status", "--demo", "--json", "--window", "5s")
    assert result.returncode == 0, result.stderr
    data = strict_json(result.stdout)
    assert data["environment"] == "demo"
    assert data["window_s"] == 5.0
    assert [n["name"] for n in data["nodes"]] == ["gpu-a1", "gpu-a2", "gpu-a3", "gpu-a4"]
    for node in data["nodes"]:
        assert len(node["gpus"]) == 8
        assert all(0 <= g["reading"]["util_pct"] <= 100 for g in node["gpus"])
        assert node["kv_cache_pct"] is not None
        assert node["gpu_status"]["last_error"] is None
    names = {e["name"]: e for e in data["endpoints"]}
    assert set(names) == {"chat-primary", "chat-large", "chat-api", "chat-backup", "gateway"}
    for name in ("chat-primary", "chat-large"):
        endpoint = names[name]
        assert endpoint["source"] in ("engine", "engine lifetime")
        assert endpoint["n"] > 0  # the requests behind the percentiles
        assert endpoint["p95_s"] > 0
        assert endpoint["ttft_p95_s"] > 0
        assert endpoint["gpu_cost_per_hour_usd"] > 0
        assert endpoint["probe_spend_per_hour_usd"] is None
        assert endpoint["requests_per_s"] > 0
    for name in ("chat-api", "chat-backup"):
        api = names[name]
        assert api["source"] == "probe" and api["n"] >= 1
        assert api["gpu_cost_per_hour_usd"] is None  # an API: usage unknown, not $0.00
        assert api["probe_spend_per_hour_usd"] > 0  # what the console's own probes cost
    assert names["gateway"]["source"] == "probe" and names["gateway"]["n"] >= 1
    assert data["gpu_cost_per_hour_usd"] == sum(n["cost_per_hour_usd"] for n in data["nodes"])
    assert all(s["consecutive_failures"] == 0 for s in data["sources"])


def test_status_table_fits_80_columns_and_states_its_window() -> None:
    result = llmops("status", "--demo", "--window", "3s")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("figures over the last 3s;")
    assert [line.split()[0] for line in lines if line.startswith(("chat-", "gpu-"))] == [
        "chat-primary", "chat-large", "chat-api", "chat-backup", "gpu-a1", "gpu-a2", "gpu-a3",
        "gpu-a4",
    ]  # fmt: skip
    assert max(len(line) for line in lines) <= 80


def unreachable_node_config(tmp_path: Path, store: str) -> Path:
    """A config whose one node has nothing listening on its SSH port."""
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(
        "environment: staging\nssh: {known_hosts: known_hosts, connect_timeout: 1s}\n"
        f"store: {store}\nnodes:\n  - {{name: gpu-x1, host: 127.0.0.1, port: 9}}\n"
    )
    return path


def test_status_table_exits_1_and_names_the_failed_source(tmp_path: Path) -> None:
    path = unreachable_node_config(tmp_path, "s.db")
    result = llmops("status", "--config", str(path), "--window", "2s")
    assert result.returncode == 1
    assert "environment: staging" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("gpu-x1")]
    assert row.split()[:4] == ["gpu-x1", "!DOWN", "N/A", "N/A"]  # "!": an alarm, in a pipe
    assert "FAILED gpus:gpu-x1: gpu-x1 (llmops@127.0.0.1:9): cannot connect" in result.stdout
    assert "GPU nodes: N/A/hour (no cost_per_hour_usd for gpu-x1)" in result.stdout


def test_store_that_cannot_be_opened_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    path = unreachable_node_config(tmp_path, "not-a-folder/llmops.db")
    result = llmops("status", "--config", str(path), "--window", "2s")
    assert result.returncode == 2
    assert result.stderr.startswith(f"llmops: {path}:3: store: cannot open {tmp_path}/not-a-folder")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_status_json_of_an_engine_reporting_nan_is_json(tmp_path: Path) -> None:
    # Issue 7, item 2: `le="+Inf"} NaN` used to reach `status --json` as NaN and Infinity.
    engine = LoopbackServer()
    engine.metrics_text = (FIXTURES / "vllm" / "metrics-vllm-docs-usage-excerpt.txt").read_text()
    engine.metrics_text += (
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{engine="0",model_name="m",le="1.0"} 3\n'
        'vllm:e2e_request_latency_seconds_bucket{engine="0",model_name="m",le="+Inf"} NaN\n'
        'vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} NaN\n'
    )
    path = unreachable_node_config(tmp_path, "s.db")
    path.write_text(
        path.read_text().replace("port: 9}", f'port: 9, engine: {{url: "{engine.url}"}}}}')
    )
    try:
        result = llmops("status", "--config", str(path), "--json", "--window", "2s")
    finally:
        engine.close()
    assert result.returncode == 1  # the node's SSH is down; the engine answered
    data = strict_json(result.stdout)
    (source,) = [s for s in data["sources"] if s["name"] == "engine:gpu-x1"]
    assert source["consecutive_failures"] == 0
    assert "NaN/Inf sample(s) dropped" in source["warning"]


@pytest.mark.parametrize("window", ["0s", "11m", "1h", "soon", "-5s"])
def test_status_window_out_of_range_is_a_usage_error(window: str) -> None:
    result = llmops("status", "--demo", "--window", window)
    assert result.returncode == 2
    assert "--window" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["config", "check", "--help"]])
def test_help(args: list[str]) -> None:
    result = llmops(*args)
    assert result.returncode == 0
    assert "usage: llmops" in result.stdout


def demo_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A TMPDIR and a data folder of the test's own for `llmops demo`."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TERM": "xterm-256color"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return tmp, env


@contextlib.contextmanager
def demo_in_a_terminal(tmp: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`llmops demo` on a pty, yielded once its fleet is up; killed if still running after."""
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "demo"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    threading.Thread(target=lambda: _drain(primary), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not list(tmp.glob("llmops-demo-*/known_hosts")):
            assert time.monotonic() < deadline, "the demo fleet never started"
            assert proc.poll() is None, "llmops demo exited early"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_hangup_or_term_stops_the_demo_and_removes_its_folder(tmp_path: Path, signum: int) -> None:
    """The SSH session drops or the console is told to stop: no demo key is left behind."""
    tmp, env = demo_env(tmp_path)
    with demo_in_a_terminal(tmp, env) as proc:
        _wait_for_event(tmp_path / "data" / "llmops" / "demo.db", "console.started")
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 128 + signum
    assert list(tmp.iterdir()) == []
    # The hub stopped and flushed on its way out: the incident log says who stopped it.
    events = Store(tmp_path / "data" / "llmops" / "demo.db").events()
    name = signal.Signals(signum).name
    assert events[0]["kind"] == "console.stopped"
    assert events[0]["message"] == f"console stopped by {name}"
    assert any(e["kind"] == "console.started" for e in events)


def test_a_demo_killed_with_sigkill_leaves_no_key_behind_after_the_next_start(
    tmp_path: Path,
) -> None:
    tmp, env = demo_env(tmp_path)
    with demo_in_a_terminal(tmp, env) as proc:
        proc.kill()  # SIGKILL: nothing unwinds, the folder with the private key stays
        proc.wait(timeout=30)
    (left,) = tmp.glob("llmops-demo-*")
    assert (left / "id_ed25519").exists()  # the demo's private client key
    result = subprocess.run(
        [sys.executable, "-m", "console.cli", "status", "--demo", "--window", "1s"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert not left.exists()  # the next demo removed the dead one's folder
    assert list(tmp.iterdir()) == []


def _wait_for_event(db: Path, kind: str, timeout_s: float = 30.0) -> None:
    """Until the console has logged ``kind`` (it came up on the fleet), read-only."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn,
        ):
            if conn.execute("SELECT 1 FROM events WHERE kind = ?", (kind,)).fetchone():
                return
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event in {db} after {timeout_s:g}s")


def _drain(fd: int) -> None:  # a terminal that is read, as a real one is
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def test_hosts_scan_prints_the_known_hosts_lines_the_console_would_accept(tmp_path: Path) -> None:
    from console.demo import DemoFleet

    with DemoFleet(tmp_path / "demo") as fleet:
        fleet.start()
        trusted = set(fleet.known_hosts_path.read_text().splitlines())
        result = llmops("hosts", "scan", "gpu-a2", "gw-1", "--config", str(fleet.config_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Each line is one the demo's known_hosts already trusts: the same key, the same name.
    assert len(lines) == 2 and set(lines) <= trusted
    fingerprints = result.stderr.splitlines()
    assert [f.split(":")[0] for f in fingerprints] == ["# gpu-a2", "# gw-1"]
    assert all(" ssh-ed25519 SHA256:" in f for f in fingerprints)


def test_hosts_scan_of_an_unknown_name_or_a_dead_node_says_which(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(
        "environment: test\nssh: {known_hosts: known_hosts, connect_timeout: 1s}\n"
        f"nodes: [{{name: gpu-x1, host: 127.0.0.1, port: {free_port()}}}]\n"
    )
    unknown = llmops("hosts", "scan", "gpu-x9", "--config", str(path))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"llmops: hosts scan: gpu-x9: not a node or router in {path} (known: gpu-x1)"
    )
    dead = llmops("hosts", "scan", "gpu-x1", "--config", str(path))
    assert dead.returncode == 1 and dead.stdout == ""
    (line,) = dead.stderr.strip().splitlines()
    assert line.startswith("llmops: gpu-x1 (llmops@127.0.0.1:")
    assert line.endswith("cannot scan host keys: connection refused")


def test_watch_prints_each_alert_as_it_fires_and_logs_it(tmp_path: Path) -> None:
    from console.demo import DemoFleet
    from tests.test_alerts import alerting_config

    with DemoFleet(tmp_path / "demo", deterministic=True) as fleet:
        fleet.start()
        path = alerting_config(fleet, tmp_path)
        watch = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "watch", "--config", str(path), "--for", "15s"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        first = watch.stdout.readline()
        assert first.startswith("watching 4 nodes and 5 endpoints; 1 alert rules;"), first
        fleet.inject("provider-5xx", "primary-api")
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    (fired,) = [line for line in out.splitlines() if " alert.firing " in line]
    assert re.fullmatch(
        r"\S+ alert\.firing page primary-errors firing: error_pct of chat-api \d+\.\d% "
        r"\(above 20\.0%\) for 2s",
        fired,
    ), fired
    store = Store(tmp_path / "alerts.db")
    try:
        kinds = [e["kind"] for e in store.events(limit=1000)]
    finally:
        store.close()
    assert "alert.firing" in kinds and "console.stopped" in kinds
