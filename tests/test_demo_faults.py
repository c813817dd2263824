"""The demo faults a runbook undoes: long prompts, a bad revision, a bad canary, a removed flag.

Each fault's effect and its undo, in the simulator where that is enough (deterministic and
fast: figures are computed from the engine's own /metrics histograms, as the console computes
them), and over real SSH and HTTP where a user would notice it (a restart, the journal, 500s).
"""

from __future__ import annotations

import ast
import asyncio
import csv
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from console.config import load_config
from console.demo import DemoFleet
from console.demo.engine_args import EngineArgs, EngineArgsError, parse_engine_file
from console.demo.engine_sim import EngineSim
from console.demo.faults import ActiveFaults
from console.demo.fleet import PLANS
from console.demo.traffic import TrafficGenerator, TrafficTarget
from console.models import Histogram
from console.stats import histogram_quantile
from tests.test_demo_fleet import RESTART, SMALL, chat_body, connect, engine_url, wait_for_health

# The ITL P95 a latency runbook checks after shrinking max-num-batched-tokens: a healthy 8B
# node is far under it, one taking long prompts at 8192 far over, the same at 2048 under.
ITL_THRESHOLD_S = 0.075
ARGS_FILE = "/etc/vllm/args.yaml"
DATA = Path(__file__).parent.parent / "console" / "data" / "vllm"
WARM_S, MEASURE_S = 60, 120  # a minute to settle, then the console's window (and some)
LABELS = {"model_name": SMALL, "engine": "0"}


def _buckets(registry: CollectorRegistry, family: str) -> dict[float, float]:
    (metric,) = [m for m in registry.collect() if m.name == family]
    return {float(s.labels["le"]): s.value for s in metric.samples if s.name.endswith("_bucket")}


def _p95(before: dict[float, float], after: dict[float, float]) -> float:
    """PromQL's histogram_quantile(0.95, increase(...)) between two scrapes."""
    buckets = tuple(sorted((le, after[le] - before.get(le, 0.0)) for le in after))
    return histogram_quantile(0.95, Histogram(buckets=buckets, sum=0.0, count=buckets[-1][1]))


def simulate(
    max_num_batched_tokens: int = 8192, revision: str = "good", **faults: object
) -> dict[str, float]:
    """P95 ITL, TTFT and e2e of one 8B node under the demo's own traffic, and its error share."""
    args = EngineArgs(SMALL, (SMALL,), revision, max_num_batched_tokens=max_num_batched_tokens)
    overlay = ActiveFaults(**faults)
    engine = EngineSim(args, overlay)
    traffic = TrafficGenerator(PLANS[0].traffic, 1, rng=None)
    target = TrafficTarget("gpu-a1", engine, overlay)
    families = ("inter_token_latency", "time_to_first_token", "e2e_request_latency")
    snapshots = []
    for seconds in (WARM_S, MEASURE_S):
        for _ in range(seconds * 2):
            traffic.tick(0.5, [target])
            engine.advance(0.5)
        registry = engine.metrics.registry
        snapshots.append({f: _buckets(registry, f"vllm:{f}_seconds") for f in families})
    figures = {f: _p95(snapshots[0][f], snapshots[1][f]) for f in families}
    finished = {
        reason: engine.metrics.registry.get_sample_value(
            "vllm:request_success_total", {**LABELS, "finished_reason": reason}
        )
        or 0.0
        for reason in ("stop", "length", "abort", "error")
    }
    figures["error_share"] = finished["error"] / sum(finished.values())
    figures["aborted"] = finished["abort"]
    return figures


# -- long-prompts --------------------------------------------------------------------------------


def test_long_prompts_stall_decodes_until_the_batch_budget_shrinks() -> None:
    healthy = simulate()
    long_8192 = simulate(long_prompts=True)
    long_2048 = simulate(2048, long_prompts=True)
    itl = "inter_token_latency"
    assert healthy[itl] < 0.5 * ITL_THRESHOLD_S
    assert long_8192[itl] > 1.5 * ITL_THRESHOLD_S  # an 8k prefill chunk in most steps
    assert long_2048[itl] < 0.7 * ITL_THRESHOLD_S  # the fault still on, the chunks smaller
    e2e = "e2e_request_latency"
    assert long_8192[e2e] > 2 * healthy[e2e]
    assert long_8192["aborted"] == long_2048["aborted"] == 0  # slow, not overloaded


async def test_long_prompts_is_a_fault_of_one_node_until_healed(tmp_path: Path) -> None:
    with DemoFleet(tmp_path, nodes=2, traffic=False, deterministic=True) as fleet:
        assert fleet.targets("long-prompts")[0] == "gpu-a1"
        description = fleet.inject("long-prompts")
        assert fleet.active_faults() == [("long-prompts", "gpu-a1")]
        fleet.heal()
        assert fleet.active_faults() == []
    assert "30% of its requests carry 8x prompts" in description


# -- bad revisions -------------------------------------------------------------------------------


def test_a_bad_revision_is_slow_and_fails_a_tenth_until_rolled_back() -> None:
    bad = simulate(revision="b4d", bad_revisions={"b4d"})
    rolled_back = simulate(revision="good", bad_revisions={"b4d"})
    assert bad["error_share"] == pytest.approx(0.1, abs=0.005)
    assert rolled_back["error_share"] == 0
    assert bad["e2e_request_latency"] > 2 * rolled_back["e2e_request_latency"]


def test_a_canary_pin_makes_only_other_revisions_bad() -> None:
    faults = ActiveFaults(good_revision="a1b2c3")
    assert not faults.revision_is_bad("a1b2c3")
    assert faults.revision_is_bad("d4e5f6")
    assert simulate(revision="a1b2c3", good_revision="a1b2c3")["error_share"] == 0
    assert simulate(revision="d4e5f6", good_revision="a1b2c3")["error_share"] > 0.09


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    """Four nodes (two behind the router), no simulated traffic: real requests count alone."""
    with DemoFleet(tmp_path, nodes=4, traffic=False, deterministic=True) as demo:
        yield demo


async def statuses(client: httpx.AsyncClient, fleet: DemoFleet, node: str, n: int) -> list[int]:
    url = engine_url(fleet, node) + "/v1/chat/completions"
    return [
        (await client.post(url, json=chat_body(SMALL, max_tokens=4))).status_code for _ in range(n)
    ]


async def started_with(conn) -> dict[str, object]:
    """The arguments the engine last started with, from vLLM's own line in the journal."""
    journal = (await conn.run("journalctl -u vllm.service --no-pager")).stdout
    line = [line for line in journal.splitlines() if "non-default args: " in line][-1]
    return ast.literal_eval(line.split("non-default args: ", 1)[1])


async def test_bad_revision_deploys_keeps_the_old_file_and_a_rollback_heals(
    fleet: DemoFleet,
) -> None:
    engine = load_config(fleet.config_path).node("gpu-a1").engine
    assert engine is not None
    pinned = engine.pinned_revision
    async with connect(fleet, "gpu-a1") as conn, httpx.AsyncClient() as client:
        before = (await conn.run(f"cat {ARGS_FILE}")).stdout
        description = fleet.inject("bad-revision")  # the first node by default
        await wait_for_health(client, engine_url(fleet, "gpu-a1"), 200)
        bad = fleet.served_revision("gpu-a1")
        async with conn.start_sftp_client() as sftp:
            kept = [n for n in await sftp.listdir("/etc/vllm") if n.startswith("args.yaml.")]
        assert len(kept) == 1 and re.fullmatch(r"args\.yaml\.\d{8}T\d{6}Z", kept[0])
        assert (await conn.run(f"cat /etc/vllm/{kept[0]}")).stdout == before
        deployed = yaml.safe_load((await conn.run(f"cat {ARGS_FILE}")).stdout)
        logged = await started_with(conn)
        failing = await statuses(client, fleet, "gpu-a1", 20)
        # The rollback a runbook does: the kept file back in place, a restart.
        async with conn.start_sftp_client() as sftp, sftp.open(ARGS_FILE, "w") as f:
            await f.write(before)
        assert (await conn.run(RESTART)).exit_status == 0
        await wait_for_health(client, engine_url(fleet, "gpu-a1"), 200)
        healed = await statuses(client, fleet, "gpu-a1", 20)
        fleet.heal()  # nothing left to undo: the file already names the good revision
        assert fleet.served_revision("gpu-a1") == pinned
    assert bad != pinned and bad in description
    assert deployed["revision"] == bad
    assert deployed["served-model-name"] == SMALL  # clients keep their model name
    assert logged["revision"] == bad
    assert set(logged) == {k.replace("-", "_") for k in deployed}
    assert sorted(failing) == [200] * 18 + [500] * 2
    assert healed == [200] * 20


async def test_healing_a_bad_revision_restores_the_file(fleet: DemoFleet) -> None:
    pinned = fleet.served_revision("gpu-a2")
    async with httpx.AsyncClient() as client:
        fleet.inject("bad-revision", "gpu-a2")
        await wait_for_health(client, engine_url(fleet, "gpu-a2"), 200)
        assert fleet.served_revision("gpu-a2") != pinned
        fleet.heal()
        await wait_for_health(client, engine_url(fleet, "gpu-a2"), 200)
        assert fleet.served_revision("gpu-a2") == pinned
        assert await statuses(client, fleet, "gpu-a2", 20) == [200] * 20


async def test_bad_canary_changes_nothing_until_another_revision_is_deployed(
    fleet: DemoFleet,
) -> None:
    assert fleet.targets("bad-canary")[0] == "gpu-a2"  # the last node behind the router
    good = fleet.served_revision("gpu-a2")
    assert good is not None
    async with connect(fleet, "gpu-a2") as conn, httpx.AsyncClient() as client:
        fleet.inject("bad-canary")
        still = await statuses(client, fleet, "gpu-a2", 20)
        canary = await deploy(conn, client, fleet, "gpu-a2", "0123456789ab")
        back = await deploy(conn, client, fleet, "gpu-a2", good)
        fleet.heal()
        cleared = await deploy(conn, client, fleet, "gpu-a2", "0123456789ab")
    assert still == [200] * 20
    assert sorted(canary) == [200] * 18 + [500] * 2
    assert back == [200] * 20
    assert cleared == [200] * 20


async def deploy(conn, client: httpx.AsyncClient, fleet: DemoFleet, node: str, revision: str):
    """Put ``revision`` in the node's args file, restart, and send 20 requests."""
    async with conn.start_sftp_client() as sftp:
        async with sftp.open(ARGS_FILE) as f:
            args = yaml.safe_load(await f.read())
        args["revision"] = revision
        async with sftp.open(ARGS_FILE, "w") as f:
            await f.write(yaml.safe_dump(args, sort_keys=False))
    assert (await conn.run(RESTART)).exit_status == 0
    await wait_for_health(client, engine_url(fleet, node), 200)
    assert fleet.served_revision(node) == revision
    return await statuses(client, fleet, node, 20)


# -- engine arguments vLLM 0.33 knows, and those it does not ------------------------------------


def _catalogue(version: str) -> list[dict[str, str]]:
    text = (DATA / f"engine-args-v{version}-derived.tsv").read_text()
    return list(
        csv.DictReader((r for r in text.splitlines() if not r.startswith("#")), delimiter="\t")
    )


def _sample(kind: str) -> object:
    return {"bool": True, "int": 1, "float": 0.5, "list": ["x"], "json": {}}.get(kind, "x")


def test_every_flag_vllm_0_33_knows_is_accepted() -> None:
    rows = [r for r in _catalogue("0.33.0") if r["flag"].startswith("--")]
    assert len(rows) == 321  # 320 flags and --help
    for row in rows:
        forms = [row["flag"], *(a for a in row["aliases"].split(",") if a.startswith("--"))]
        for form in forms:
            key = form.removeprefix("--")
            value = "m" if key == "model" else _sample(row["type"])
            parse_engine_file(yaml.safe_dump({"model": "m", key: value}))
        for form in filter(None, row["negative_forms"].split(",")):
            parse_engine_file(yaml.safe_dump({"model": "m", form.removeprefix("--"): True}))


def test_flags_gone_from_vllm_0_33_are_refused_as_vllm_refuses_them() -> None:
    known = {
        option
        for row in _catalogue("0.33.0")
        for option in (row["flag"], *row["aliases"].split(","), *row["negative_forms"].split(","))
    }
    gone = [r["flag"] for r in _catalogue("0.11.0") if r["flag"].startswith("--")]
    gone = [flag for flag in gone if flag not in known]
    assert "--max-num-partial-prefills" in gone and "--swap-space" in gone
    for flag in gone:
        with pytest.raises(EngineArgsError) as error:
            parse_engine_file(yaml.safe_dump({"model": "m", flag.removeprefix("--"): 1}))
        assert str(error.value) == f"vllm serve: error: unrecognized arguments: {flag}"


def test_flags_are_read_as_vllms_parser_reads_them() -> None:
    args, logged = parse_engine_file(
        "model: m\nmax_num_seqs: 64\nmax-num-batched: 1024\ndisable-chunked-prefill: true\n"
    )
    assert (args.max_num_seqs, args.max_num_batched_tokens) == (64, 1024)  # _ or -, a prefix
    assert args.enable_chunked_prefill is False
    assert logged == {
        "model": "m",
        "max_num_seqs": 64,
        "max_num_batched_tokens": 1024,
        "enable_chunked_prefill": False,
    }
    with pytest.raises(EngineArgsError, match="ambiguous option: --max-num could match"):
        parse_engine_file("model: m\nmax-num: 3\n")


async def test_a_removed_flag_fails_the_start_with_vllms_error_in_the_journal(
    fleet: DemoFleet,
) -> None:
    async with (
        connect(fleet, "gpu-a3") as conn,
        httpx.AsyncClient() as client,
        conn.start_sftp_client() as sftp,
    ):
        async with sftp.open(ARGS_FILE) as f:
            good = await f.read()
        async with sftp.open(ARGS_FILE, "w") as f:
            await f.write(good + "max-num-partial-prefills: 2\n")
        assert (await conn.run(RESTART)).exit_status == 0
        error = "vllm serve: error: unrecognized arguments: --max-num-partial-prefills"
        deadline = time.monotonic() + 10
        while error not in (await conn.run("journalctl -u vllm.service -n 5")).stdout:
            assert time.monotonic() < deadline, "the failed start never reached the journal"
            await asyncio.sleep(0.1)
        assert (await client.get(engine_url(fleet, "gpu-a3") + "/health")).status_code == 503
        assert fleet.engine_args("gpu-a3") is None
        # Flags 0.33 knows but the simulator does not model start fine, and are logged.
        async with sftp.open(ARGS_FILE, "w") as f:
            await f.write(good + "enable-prefix-caching: true\nseed: 7\nmax_num_seqs: 128\n")
        assert (await conn.run(RESTART)).exit_status == 0
        await wait_for_health(client, engine_url(fleet, "gpu-a3"), 200)
        logged = await started_with(conn)
    args = fleet.engine_args("gpu-a3")
    assert args is not None and args.max_num_seqs == 128
    assert logged["enable_prefix_caching"] is True and logged["seed"] == 7
    assert logged["max_num_seqs"] == 128
    assert logged["revision"] == fleet.served_revision("gpu-a3")
