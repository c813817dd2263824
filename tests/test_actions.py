"""The action registry against real servers on 127.0.0.1: the embedded demo fleet (asyncssh
nodes with a vLLM 0.33 HTTP surface, and a gateway whose router reloads its weights file), the
real OpenSSH sshd (streamed commands, timeouts, a router file written through internal-sftp's
posix-rename, a reload script) and a loopback HTTP server. Nothing is mocked."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from backends.ssh import SshPool
from console.actions import (
    ActionRefused,
    AlreadyDone,
    Confirmation,
    Outcome,
    Plan,
    Registry,
    parse_started_args,
    read_engine_args,
    read_only_problem,
    read_weights,
)
from console.config import Config, load_config
from console.demo import DemoFleet
from console.demo.config_file import BACKUP_UPSTREAM, PRIMARY_UPSTREAM
from console.demo.engine_args import EngineArgs
from console.demo.router_config import ROUTE_API
from console.facts import FigureReader
from console.hub import Hub, ssh_target
from console.runbook import lint
from console.session import FleetWorld
from tests.conftest import FIXTURES
from tests.loopback_http import LoopbackServer
from tests.sshd import Sshd, sshd_available, start_sshd

if not sshd_available() and os.environ.get("LLMOPS_REQUIRE_SSHD"):
    raise RuntimeError("LLMOPS_REQUIRE_SSHD is set but OpenSSH sshd is not installed")
needs_sshd = pytest.mark.skipif(
    not sshd_available(), reason="OpenSSH sshd is not installed (.ci/run installs it)"
)

SMALL = "meta-llama/Llama-3.1-8B-Instruct"
ARGS_FILE = "/etc/vllm/args.yaml"
# 2027-01-15 08:00:00 UTC: backups made under this clock are named ...20270115T080000Z.
FIXED_CLOCK_S = 1_800_000_000.0
STAMP = "20270115T080000Z"


def confirm(plan: Plan, typed: str | None = None) -> Confirmation:
    return Confirmation("oncall@laptop", Registry.digest(plan), typed)


# -- the demo fleet ---------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    with DemoFleet(tmp_path / "demo", nodes=2, traffic=False, deterministic=True) as demo:
        yield demo


@pytest.fixture
async def demo(fleet: DemoFleet) -> AsyncIterator[tuple[Config, SshPool, httpx.AsyncClient]]:
    config = load_config(fleet.config_path)
    # The pool as the hub builds it, plus the gateway's router (the hub adds routers too).
    pool = SshPool(
        [
            *(ssh_target(config, n) for n in config.nodes),
            *(ssh_target(config, r) for r in config.routers),
        ]
    )
    async with httpx.AsyncClient() as http:
        yield config, pool, http
    await pool.close()


def args_path(fleet: DemoFleet, node: str = "gpu-a1") -> Path:
    return fleet.workdir / "nodes" / node / "root" / ARGS_FILE.lstrip("/")


def backups(fleet: DemoFleet, node: str = "gpu-a1") -> list[str]:
    return sorted(p.name for p in args_path(fleet, node).parent.glob("args.yaml.2*"))


def registry(
    demo: tuple[Config, SshPool, httpx.AsyncClient],
    *,
    read_only: bool = False,
    note: Callable[[str], Awaitable[None]] | None = None,
) -> Registry:
    config, pool, http = demo
    return Registry(config, pool, http, read_only=read_only, note=note, clock=lambda: FIXED_CLOCK_S)


def running(fleet: DemoFleet, node: str = "gpu-a1") -> EngineArgs:
    args = fleet.engine_args(node)
    assert args is not None, f"{node}'s engine is not running"
    return args


async def test_set_args_plan_shows_the_exact_diff_and_changes_nothing(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    before = args_path(fleet).read_text()
    revision = yaml.safe_load(before)["revision"]
    url = f"http://127.0.0.1:{fleet.http_ports['gpu-a1']}"
    plan = await registry(demo).plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"max_num_batched_tokens": "2048"}}
    )
    assert plan.mutating and plan.target == "gpu-a1"
    assert plan.args == {
        "node": "gpu-a1",
        "set": {"max-num-batched-tokens": 2048},  # the flag spelling, the value typed
        "unset": [],
        "wait": 300.0,
    }
    assert plan.summary == (
        "engine.set_args on gpu-a1: max-num-batched-tokens 8192 -> 2048, then restart"
    )
    assert plan.detail == (
        f"keep /etc/vllm/args.yaml on gpu-a1 as /etc/vllm/args.yaml.{STAMP}, then write:\n"
        "--- a/etc/vllm/args.yaml\n"
        "+++ b/etc/vllm/args.yaml\n"
        "@@ -3,6 +3,6 @@\n"
        f" revision: {revision}\n"
        " tensor-parallel-size: 8\n"
        " gpu-memory-utilization: 0.9\n"
        "-max-num-batched-tokens: 8192\n"
        "+max-num-batched-tokens: 2048\n"
        " max-num-seqs: 256\n"
        " enable-chunked-prefill: true\n"
        "then run on gpu-a1: sudo systemctl restart vllm.service\n"
        f"then wait up to 300s for GET {url}/health to answer 200 and /v1/models to list a "
        "model\n"
    )
    assert plan.notes == ("checked against the vLLM 0.33.0 argument catalogue",)
    assert args_path(fleet).read_text() == before
    assert backups(fleet) == []


async def test_unconfirmed_wrong_digest_and_read_only_are_refused_before_any_change(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    before = args_path(fleet).read_text()
    reg = registry(demo)
    plan = await reg.plan("engine.set_args", {"node": "gpu-a1", "set": {"max-num-seqs": 64}})
    with pytest.raises(ActionRefused, match=r"^engine.set_args on gpu-a1 not run: not confirmed$"):
        await reg.execute(plan, None)
    other = await reg.plan("engine.set_args", {"node": "gpu-a1", "set": {"max-num-seqs": 32}})
    with pytest.raises(ActionRefused, match="the confirmation is for another plan"):
        await reg.execute(plan, confirm(other))
    read_only = registry(demo, read_only=True)
    plan_ro = await read_only.plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"max-num-seqs": 64}}
    )
    with pytest.raises(ActionRefused, match=r"^read-only mode: engine.set_args on gpu-a1 not run$"):
        await read_only.execute(plan_ro, confirm(plan_ro))
    # A plan whose hidden state was altered, or one made elsewhere, is not run either.
    forged = dataclasses.replace(plan, state={**plan.state, "after": "model: evil\n"})
    with pytest.raises(ActionRefused, match="not one this registry made"):
        await reg.execute(forged, confirm(forged))
    with pytest.raises(ActionRefused, match="not one this registry made"):
        await registry(demo).execute(plan, confirm(plan))
    assert args_path(fleet).read_text() == before
    assert backups(fleet) == []
    assert running(fleet).max_num_seqs == 256


async def test_set_args_confirmed_changes_the_file_keeps_a_backup_and_restarts(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    before = args_path(fleet).read_text()
    reg = registry(demo)
    plan = await reg.plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"max-num-batched-tokens": 2048}}
    )
    backup = f"{ARGS_FILE}.{STAMP}"
    # Asked before it runs (a crash mid-change is undone with it), the undo names the backup.
    assert reg.compensation(plan, None) == (
        "engine.restore_args",
        {"node": "gpu-a1", "backup": backup},
    )
    lines: list[str] = []
    outcome = await reg.execute(plan, confirm(plan), on_output=lines.append)

    assert outcome.ok, outcome.summary
    assert outcome.undo == {"node": "gpu-a1", "backup": backup}
    assert backups(fleet) == [f"args.yaml.{STAMP}"]
    assert (args_path(fleet).parent / f"args.yaml.{STAMP}").read_text() == before
    assert yaml.safe_load(args_path(fleet).read_text())["max-num-batched-tokens"] == 2048
    assert not (args_path(fleet).parent / "args.yaml.llmops-tmp").exists()
    assert running(fleet).max_num_batched_tokens == 2048
    assert outcome.facts["served_model"] == SMALL
    assert outcome.facts["revision"] == yaml.safe_load(before)["revision"]
    started = outcome.facts["started_args"]
    if started is None:  # the demo's vLLM logs no `non-default args:` line (yet): said so
        assert "started args unknown (the journal has no `non-default args:` line" in (
            outcome.summary
        )
    else:
        assert isinstance(started, dict) and started["max_num_batched_tokens"] == 2048
    assert lines[:3] == [
        f"kept {ARGS_FILE} as {backup}",
        f"wrote {ARGS_FILE}",
        "$ sudo systemctl restart vllm.service",
    ]
    assert 0 < outcome.duration_s < 10

    # The default compensation puts the old file and the old engine settings back.
    undo = reg.compensation(plan, outcome)
    assert undo == ("engine.restore_args", {"node": "gpu-a1", "backup": backup})
    restore = await reg.plan(*undo)
    assert "-max-num-batched-tokens: 2048\n+max-num-batched-tokens: 8192\n" in restore.detail
    restored = await reg.execute(restore, confirm(restore))
    assert restored.ok, restored.summary
    assert args_path(fleet).read_text() == before
    assert running(fleet).max_num_batched_tokens == 8192
    # The file it replaced is kept too, under the next free second's name.
    assert restored.facts["backup"] == f"{ARGS_FILE}.20270115T080001Z"
    assert reg.compensation(restore, restored) is None
    # A plan runs once.
    with pytest.raises(ActionRefused, match="has run already"):
        await reg.execute(plan, confirm(plan))


async def test_a_file_or_backup_name_that_moved_on_since_the_plan_is_refused(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    reg = registry(demo)
    call = {"node": "gpu-a1", "set": {"max-num-seqs": 64}}
    plan = await reg.plan("engine.set_args", call)
    path = args_path(fleet)
    path.write_text(path.read_text().replace("max-num-seqs: 256", "max-num-seqs: 200"))
    edited = path.read_text()
    with pytest.raises(ActionRefused, match=r"args\.yaml changed since the plan was made"):
        await reg.execute(plan, confirm(plan))
    plan = await reg.plan("engine.set_args", call)
    (path.parent / f"args.yaml.{STAMP}").write_text("someone else's\n")
    with pytest.raises(
        ActionRefused, match=re.escape(f"args.yaml.{STAMP} exists already; plan it again")
    ):
        await reg.execute(plan, confirm(plan))
    assert path.read_text() == edited
    assert (path.parent / f"args.yaml.{STAMP}").read_text() == "someone else's\n"


async def test_facts_read_the_argument_file_and_the_router_weights(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    reg = registry(demo)
    args = await read_engine_args(reg, "gpu-a1")
    assert args == yaml.safe_load(args_path(fleet).read_text())
    weights = await read_weights(reg, demo[0].routers[0].name)
    assert {k: weights[k] for k in (PRIMARY_UPSTREAM, BACKUP_UPSTREAM)} == {
        PRIMARY_UPSTREAM: 100,
        BACKUP_UPSTREAM: 0,
    }
    with pytest.raises(ActionRefused, match="unknown router 'gw-9'"):
        await read_weights(reg, "gw-9")


async def test_the_backup_of_an_upstream_is_an_idle_one_on_its_route(tmp_path: Path) -> None:
    """gpu-a2 drained and backup-api idle: the backup of gpu-a1 is gpu-a2 (route chat), not
    backup-api (route chat-api, another model), though both are idle and error-free."""
    with DemoFleet(tmp_path / "demo", traffic=False, deterministic=True) as fleet:
        config = load_config(fleet.config_path)
        pool = SshPool([ssh_target(config, r) for r in config.routers])
        async with httpx.AsyncClient() as http:
            try:
                await _backup_on_its_route(registry((config, pool, http)))
            finally:
                await pool.close()


async def _backup_on_its_route(reg: Registry) -> None:
    plan = await reg.plan("routing.set_weights", {"weights": {"gpu-a2": 0, "gpu-a1": 100}})
    assert (await reg.execute(plan, confirm(plan))).ok
    figures = FigureReader(Hub(reg.config), FleetWorld(reg))
    assert await figures.fact("backup_upstream", "gpu-a1") == (
        "gpu-a2",
        "gpu-a2 has weight 0 on gpu-a1's route and an error rate of 0.0%",
    )
    backup, _ = await figures.fact("backup_upstream", PRIMARY_UPSTREAM)
    assert backup == BACKUP_UPSTREAM
    plan = await reg.plan("routing.set_weights", {"weights": {"gpu-a2": 50, "gpu-a1": 50}})
    assert (await reg.execute(plan, confirm(plan))).ok
    assert await figures.fact("backup_upstream", "gpu-a1") == (
        None,
        "no upstream of gpu-a1's route has weight 0",
    )


async def test_weights_never_empty_a_route_nor_move_traffic_between_routes(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    """The whole file keeps weight, yet a route (a model name) would serve nothing, or clients
    of one model would be sent to another: both refused before anything changes."""
    reg = registry(demo)
    before = fleet.router_file()
    with pytest.raises(ActionRefused, match="every weight of route chat-api would be 0"):
        await reg.plan(
            "routing.set_weights", {"weights": {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 0}}
        )
    with pytest.raises(ActionRefused, match="the upstreams are in different routes"):
        await reg.plan("routing.set_weights", {"weights": {"gpu-a1": 0, BACKUP_UPSTREAM: 100}})
    assert fleet.router_file() == before


async def test_a_removed_flag_is_refused_with_the_version_before_anything_changes(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    before = args_path(fleet).read_text()
    with pytest.raises(ActionRefused) as refused:
        await registry(demo).plan(
            "engine.set_args", {"node": "gpu-a1", "set": {"max-num-partial-prefills": 2}}
        )
    assert str(refused.value) == (
        "vLLM 0.33.0 on gpu-a1: --max-num-partial-prefills is not an argument of vLLM 0.33.0 "
        "(it was in 0.11.0 and is gone); nothing was changed"
    )
    assert args_path(fleet).read_text() == before


async def test_negative_forms_unsets_and_what_the_file_already_holds(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    reg = registry(demo)
    # --disable-X: true over the file's enable-X key is written as enable-X: false.
    plan = await reg.plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"disable-chunked-prefill": True}}
    )
    assert plan.summary == (
        "engine.set_args on gpu-a1: enable-chunked-prefill true -> false, then restart"
    )
    assert "-enable-chunked-prefill: true\n+enable-chunked-prefill: false\n" in plan.detail
    # A hand-edited flag vLLM 0.33 no longer has is kept, and said, not silently refused.
    path = args_path(fleet)
    path.write_text(path.read_text() + "swap-space: 4\n")
    plan = await reg.plan(
        "engine.set_args", {"node": "gpu-a1", "unset": ["max_num_seqs", "max-model-len"]}
    )
    assert plan.summary == "engine.set_args on gpu-a1: max-num-seqs 256 -> (unset), then restart"
    assert plan.args["unset"] == ["max-num-seqs", "max-model-len"]
    assert plan.notes == (
        "checked against the vLLM 0.33.0 argument catalogue",
        "max-model-len is not in the file: nothing to unset",
        "/etc/vllm/args.yaml also holds what vLLM 0.33.0 may refuse (kept as is): "
        "--swap-space is not an argument of vLLM 0.33.0 (it was in 0.11.0 and is gone)",
    )


async def test_no_op_and_bad_values_are_refused(
    demo: tuple[Config, SshPool, httpx.AsyncClient],
) -> None:
    reg = registry(demo)
    with pytest.raises(ActionRefused, match=r"already set \(max-num-seqs=256\)"):
        await reg.plan("engine.set_args", {"node": "gpu-a1", "set": {"max-num-seqs": 256}})
    with pytest.raises(ActionRefused, match="--dtype: 'fp7' is not one of"):
        await reg.plan("engine.set_args", {"node": "gpu-a1", "set": {"dtype": "fp7"}})
    with pytest.raises(ActionRefused, match="unknown node 'gpu-a9'"):
        await reg.plan("engine.set_args", {"node": "gpu-a9", "set": {"max-num-seqs": 8}})
    with pytest.raises(ActionRefused, match="unknown argument 'sett'"):
        await reg.plan("engine.set_args", {"node": "gpu-a1", "sett": {"max-num-seqs": 8}})


async def test_protected_environment_needs_the_node_name_typed(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    config, pool, http = demo
    prod = config.model_copy(update={"environment": "prod"})
    assert prod.protected
    reg = Registry(prod, pool, http, clock=lambda: FIXED_CLOCK_S)
    plan = await reg.plan("engine.set_args", {"node": "gpu-a1", "set": {"max-num-seqs": 128}})
    for typed in (None, "gpu-a2", "GPU-A1"):
        with pytest.raises(ActionRefused, match="in prod, confirm by typing 'gpu-a1'"):
            await reg.execute(plan, confirm(plan, typed))
    assert backups(fleet) == []
    outcome = await reg.execute(plan, confirm(plan, "gpu-a1"))
    assert outcome.ok, outcome.summary
    assert running(fleet).max_num_seqs == 128


async def test_an_engine_that_never_serves_fails_with_the_journal_and_rolls_back(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    # A value vLLM's parser takes and its start-up refuses (the 8B model's 32 attention heads
    # do not split over 3 GPUs): the engine exits, and keeps failing as systemd restarts it.
    reg = registry(demo)
    plan = await reg.plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"tensor-parallel-size": 3}, "wait": "1.5s"}
    )
    outcome = await reg.execute(plan, confirm(plan))
    assert not outcome.ok
    assert outcome.summary.startswith("vLLM on gpu-a1 did not become healthy in 1.5s; journal: ")
    assert "must be divisible by tensor parallel size (3)" in outcome.output
    assert outcome.undo == {"node": "gpu-a1", "backup": f"{ARGS_FILE}.{STAMP}"}
    undo = reg.compensation(plan, outcome)
    assert undo is not None
    restore = await reg.plan(*undo)
    restored = await reg.execute(restore, confirm(restore))
    assert restored.ok, restored.summary
    assert running(fleet).tensor_parallel_size == 8


async def test_restore_args_without_a_backup_takes_the_newest(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    reg = registry(demo)
    with pytest.raises(ActionRefused, match=r"no backup of /etc/vllm/args\.yaml beside it"):
        await reg.plan("engine.restore_args", {"node": "gpu-a1"})
    folder = args_path(fleet).parent
    (folder / "args.yaml.20260101T000000Z").write_text("model: old\n")
    (folder / "args.yaml.20260301T000000Z").write_text(args_path(fleet).read_text() + "seed: 1\n")
    (folder / "args.yaml.llmops-tmp").write_text("model: half-written\n")
    plan = await reg.plan("engine.restore_args", {"node": "gpu-a1"})
    assert plan.args["backup"] == f"{ARGS_FILE}.20260301T000000Z"
    assert plan.detail.count("\n+seed: 1\n") == 1


JOURNAL = """\
Dec 02 03:50:29 gpu-a1 vllm[4001]: INFO vLLM API server version 0.33.0
Dec 02 03:50:29 gpu-a1 vllm[4001]: INFO [utils.py:233] non-default args: {'max_num_seqs': 256}
Dec 02 03:50:40 gpu-a1 systemd[1]: Started vllm.service - vLLM OpenAI-compatible server.
Dec 02 03:50:41 gpu-a1 vllm[4003]: INFO vLLM API server version 0.33.0
Dec 02 03:50:41 gpu-a1 vllm[4003]: INFO [utils.py:233] non-default args: {'model_tag': None, \
'max_num_seqs': 64, 'enable_chunked_prefill': False, 'served_model_name': ['a', 'b']}
"""


def test_started_args_are_read_from_the_latest_start_only() -> None:
    assert parse_started_args(JOURNAL) == (
        {
            "model_tag": None,
            "max_num_seqs": 64,
            "enable_chunked_prefill": False,
            "served_model_name": ["a", "b"],
        },
        "",
    )
    restarted = JOURNAL + "Dec 02 03:51:00 gpu-a1 vllm[4005]: INFO vLLM API server version 0.33.0\n"
    assert parse_started_args(restarted) == (
        None,
        "the journal has no `non-default args:` line for this start",
    )
    odd = "vllm[1]: INFO non-default args: {'device': <Device.CUDA: 1>}\n"
    assert parse_started_args(odd) == (None, "its `non-default args:` line is not a plain dict")


async def test_failover_on_the_demo_gateway_moves_what_its_router_loads(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    (router,) = demo[0].routers
    reg = registry(demo)
    before = fleet.router_weights(ROUTE_API)
    assert before == {PRIMARY_UPSTREAM: 100, BACKUP_UPSTREAM: 0}
    plan = await reg.plan(
        "routing.set_weights", {"weights": {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}}
    )
    assert plan.target == router.name
    outcome = await reg.execute(plan, confirm(plan))
    assert outcome.ok, outcome.summary
    assert fleet.router_weights(ROUTE_API) == {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}
    undo = reg.compensation(plan, outcome)
    assert undo is not None
    back = await reg.plan(*undo)
    assert (await reg.execute(back, confirm(back))).ok
    assert fleet.router_weights(ROUTE_API) == before


async def test_weights_are_edited_in_place_keeping_the_router_files_comments(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    """Only the weight lines change: a comment, another section's quoting and every other
    line of the file stay as its owner wrote them, in the diff and in the file."""
    path = fleet._running_gateway().config_path
    original = path.read_text()
    assert original.count("    weight: 100\n") == 2 and original.count("    weight: 0\n") == 1
    text = "# Owned by the platform team: weights move through runbooks only\n" + (
        original.replace("router_settings:\n", "router_settings:  # keep shuffle\n")
        + "general_settings:\n  master_key: 'os.environ/LITELLM_MASTER_KEY'\n"
    )
    path.write_text(text)
    reg = registry(demo)
    plan = await reg.plan(
        "routing.set_weights", {"weights": {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}}
    )
    changed = [line for line in plan.detail.splitlines() if line[:2] in ("- ", "+ ")]
    assert changed == ["-    weight: 100", "+    weight: 0", "-    weight: 0", "+    weight: 100"]
    assert plan.notes == ()  # not written whole
    assert (await reg.execute(plan, confirm(plan))).ok
    entry = "\n  model_info:\n    id: "
    assert path.read_text() == text.replace(
        f"weight: 100{entry}{PRIMARY_UPSTREAM}", f"weight: 0{entry}{PRIMARY_UPSTREAM}"
    ).replace(f"weight: 0{entry}{BACKUP_UPSTREAM}", f"weight: 100{entry}{BACKUP_UPSTREAM}")
    assert fleet.router_weights(ROUTE_API) == {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}


async def test_a_change_whose_file_landed_without_its_restart_is_finished_not_done(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    """A crash between writing the file and restarting: the file says 4096, the engine runs
    8192. Planned to finish, the call writes nothing, restarts, and verifies the engine runs
    the args; its undo stays that of the call that wrote the file."""
    reg = registry(demo)
    call = {"node": "gpu-a1", "set": {"max-num-batched-tokens": 4096}}
    made = await reg.plan("engine.set_args", call)
    args_path(fleet).write_text(str(made.state["after"]))  # what the crashed attempt left
    assert running(fleet).max_num_batched_tokens == 8192
    with pytest.raises(AlreadyDone):
        await reg.plan("engine.set_args", call)

    finish = await reg.plan("engine.set_args", call, finish=True)
    assert finish.mutating and finish.finishes and finish.target == "gpu-a1"
    assert finish.detail.startswith(
        f"{ARGS_FILE} on gpu-a1 already holds the change; nothing is written\n"
        "run on gpu-a1: sudo systemctl restart vllm.service\n"
        "then wait up to 300s for GET "
    )
    assert reg.compensation(finish, None) is None
    with pytest.raises(ActionRefused, match="not confirmed"):
        await reg.execute(finish, None)
    lines: list[str] = []
    outcome = await reg.execute(finish, confirm(finish), on_output=lines.append)
    assert outcome.ok, outcome.summary
    assert lines[0] == "$ sudo systemctl restart vllm.service"
    assert running(fleet).max_num_batched_tokens == 4096
    assert backups(fleet) == []  # nothing written
    assert outcome.undo is None


async def test_weights_whose_file_landed_without_the_reload_are_finished_not_done(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    """A crash between writing the router file and reloading: the file says 0/100, the router
    still routes 100/0. Planned to finish, the call reloads, and the router loads the file."""
    (router,) = demo[0].routers
    reg = registry(demo)
    call = {"weights": {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}}
    made = await reg.plan("routing.set_weights", call)
    await demo[1].replace_file(router.name, router.file, str(made.state["after"]).encode())
    assert fleet.router_weights(ROUTE_API) == {PRIMARY_UPSTREAM: 100, BACKUP_UPSTREAM: 0}
    with pytest.raises(AlreadyDone):
        await reg.plan("routing.set_weights", call)

    finish = await reg.plan("routing.set_weights", call, finish=True)
    assert finish.mutating and finish.finishes
    assert finish.detail == (
        f"{router.file} on {router.name} already holds the change; nothing is written\n"
        f"run on {router.name}: {router.reload_command}\n"
    )
    assert reg.compensation(finish, None) is None
    outcome = await reg.execute(finish, confirm(finish))
    assert outcome.ok, outcome.summary
    assert "(in the file already), reloaded" in outcome.summary
    assert fleet.router_weights(ROUTE_API) == {PRIMARY_UPSTREAM: 0, BACKUP_UPSTREAM: 100}


# -- commands over the real OpenSSH sshd ------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = start_sshd(tmp_path / "sshd", FIXTURES / "gpu" / "nvidia-smi-query-load.csv")
    yield server
    server.stop()


ROUTES = """\
# the gateway's routes
model_list:
  - model_name: chat
    model_info: {id: primary}
    litellm_params: {model: openai/llama, api_base: "http://10.0.3.11:8000/v1", weight: 100}
  - model_name: chat
    model_info: {id: backup}
    litellm_params: {model: openai/gpt-4o-mini}
"""


def sshd_config(sshd: Sshd, tmp_path: Path, router_format: str = "yaml") -> Config:
    routes = sshd.root / f"routes.{router_format}"
    if router_format == "yaml":
        routes.write_text(ROUTES)
    else:
        routes.write_text(json.dumps(yaml.safe_load(ROUTES), indent=2))
    reload = sshd.root / "bin" / "reload-router"
    reload.write_text(
        f'#!/bin/sh\necho "reloaded" >> {sshd.root / "reloads"}\necho "router reloaded"\n'
        f'[ -e {sshd.root / "fail-reload"} ] && {{ echo "bad routes" >&2; exit 4; }}\nexit 0\n'
    )
    reload.chmod(0o755)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "environment": "test",
                "store": str(tmp_path / "llmops.db"),
                "ssh": {
                    "user": sshd.user,
                    "known_hosts": str(sshd.known_hosts),
                    "identity_files": [str(sshd.client_key)],
                    "connect_timeout": "5s",
                },
                "nodes": [{"name": "box", "host": "127.0.0.1", "port": sshd.port}],
                "routers": [
                    {
                        "name": "gw-1",
                        "host": "127.0.0.1",
                        "port": sshd.port,
                        "file": str(routes),
                        "format": router_format,
                        "list_path": "model_list",
                        "name_key": "model_info.id",
                        "weight_key": "litellm_params.weight",
                        "reload_command": "reload-router",
                        "upstreams": {"primary": {"node": "box"}, "backup": {"node": "box"}},
                    }
                ],
            }
        )
    )
    return load_config(path)


@dataclasses.dataclass
class Box:
    """A registry over the real sshd: one node (box) and one router (gw-1) on it."""

    reg: Registry
    config: Config
    sshd: Sshd
    pool: SshPool
    http: httpx.AsyncClient


@pytest.fixture
async def box(sshd: Sshd, tmp_path: Path) -> AsyncIterator[Box]:
    config = sshd_config(sshd, tmp_path)
    pool = SshPool(
        [
            *(ssh_target(config, n) for n in config.nodes),
            *(ssh_target(config, r) for r in config.routers),
        ]
    )
    async with httpx.AsyncClient() as http:
        reg = Registry(config, pool, http, clock=lambda: FIXED_CLOCK_S)
        yield Box(reg, config, sshd, pool, http)
    await pool.close()


@needs_sshd
async def test_node_run_streams_lines_in_order_before_the_command_ends(
    box: Box,
) -> None:
    reg = box.reg
    command = "printf 'one\\n'; sleep 0.4; printf 'two\\n' >&2; sleep 0.4; printf 'three'"
    plan = await reg.plan("node.run", {"node": "box", "command": command})
    assert plan.detail == command and plan.mutating and plan.target == "box"
    arrived: list[tuple[float, str]] = []
    start = time.monotonic()
    outcome = await reg.execute(
        plan, confirm(plan), on_output=lambda line: arrived.append((time.monotonic(), line))
    )
    ended = time.monotonic()
    assert [line for _, line in arrived] == ["one", "two", "three"]
    assert arrived[0][0] - start < ended - start - 0.5  # "one" came while it still ran
    assert outcome.ok and outcome.exit_status == 0
    assert outcome.output == "one\ntwo\nthree"
    assert outcome.summary.endswith("exited 0")


@needs_sshd
async def test_node_run_reports_the_exit_status_and_a_timeout(
    box: Box,
) -> None:
    reg, sshd = box.reg, box.sshd
    plan = await reg.plan("node.run", {"node": "box", "command": "echo no >&2; exit 3"})
    outcome = await reg.execute(plan, confirm(plan))
    assert (outcome.ok, outcome.exit_status, outcome.output) == (False, 3, "no")
    plan = await reg.plan("node.run", {"node": "box", "command": "echo start; sleep 30"})
    outcome = await reg.execute(plan, confirm(plan), timeout_s=1)
    assert not outcome.ok and outcome.exit_status is None
    assert outcome.summary == "node.run on box: `echo start; sleep 30` timed out after 1s (killed)"
    assert outcome.output == "start"
    assert outcome.duration_s < 5
    deadline = time.monotonic() + 5
    while sshd.runs("sleep"):  # the command was killed, not left behind
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


@needs_sshd
async def test_node_inspect_runs_read_only_commands_unconfirmed(
    box: Box,
) -> None:
    reg, sshd = box.reg, box.sshd
    (sshd.root / "note.txt").write_text("a\nb\nc\n")
    read_only = Registry(box.config, box.pool, box.http, read_only=True)
    plan = await read_only.plan(
        "node.inspect", {"node": "box", "command": f"tail -n 2 {sshd.root / 'note.txt'}"}
    )
    assert not plan.mutating
    outcome = await read_only.execute(plan, None)
    assert outcome.ok and outcome.output == "b\nc"
    with pytest.raises(ActionRefused, match=r"refused: systemctl restart is not one of"):
        await reg.plan("node.inspect", {"node": "box", "command": "systemctl restart vllm"})


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("cat /etc/hosts; rm -rf /", "it holds shell syntax (;)"),
        ("journalctl -u vllm | grep ERROR", "it holds shell syntax (|)"),
        ("cat $(echo /etc/shadow)", "it holds shell syntax ($)"),
        ("ls > /etc/motd", "it holds shell syntax (>)"),
        ("uptime\nreboot", "it spans more than one line"),
        ("cat 'unclosed", "it cannot be read as one command"),
        ("rm -rf /tmp/x", "rm is not one of cat, df, free, head, hostname, journalctl, ls,"),
        ("/tmp/cat /etc/hosts", "/tmp/cat: name the program, not a path"),
        ("sudo -u root cat /etc/shadow", "sudo -u: only sudo -n is accepted"),
        ("systemctl restart vllm.service", "systemctl restart is not one of"),
        ("sudo systemctl stop vllm.service", "systemctl stop is not one of"),
        ("nvidia-smi -pm 1", "nvidia-smi -pm is not a query option"),
        ("nvidia-smi --gpu-reset -i 0", "nvidia-smi --gpu-reset is not a query option"),
        ("nvidia-smi -r", "nvidia-smi -r is not a query option"),
        ("nvidia-smi mig -cgi 9", "nvidia-smi mig is not a query option"),
        ("tail -f /var/log/syslog", "tail -f follows the file"),
        ("tail -fn 5 /var/log/syslog", "tail -fn follows the file"),
        ("journalctl --vacuum-time=1s", "journalctl --vacuum-time=1s is not one of its read"),
        # An abbreviation of --rotate, and an option that writes a file at exit.
        ("sudo journalctl --rot", "journalctl --rot is not one of its read options"),
        (
            "journalctl --cursor-file=/etc/vllm/args.yaml",
            "journalctl --cursor-file=/etc/vllm/args.yaml is not one of its read options",
        ),
        ("journalctl -f -u vllm", "journalctl -f is not one of its read options"),
        # An option's value is not the verb: -p status restart would restart.
        ("systemctl -p status restart vllm.service", "systemctl -p is not one of"),
        ("sudo -n cat /etc/shadow", "sudo cat: files are read as the SSH user"),
        ("cat /home/llmops/.ssh/id_ed25519", "cat: private keys, password files"),
        ("tail --fol /var/log/syslog", "tail --fol follows the file"),
        ("nvidia-smi -l 1", "nvidia-smi -l is not a query option"),
        ("hostname evil", "hostname evil may set the host name"),
        # -n and -b take the next word only if it is a count or a boot (journalctl.c): here
        # journalctl reads it as an option of its own, and these write.
        ("journalctl -n --vacuum-size=1K", "journalctl --vacuum-size=1K is not one of its read"),
        ("journalctl -b --rotate", "journalctl --rotate is not one of its read options"),
        ("sudo journalctl -u vllm -n --vacuum-time=1s", "journalctl --vacuum-time=1s is not"),
        # The node's shell expands patterns into names the private-path check would refuse.
        ("cat ~/.s?h/id_ed25519", "cat ~/.s?h/id_ed25519: name files exactly"),
        ("cat /etc/sh*dow", "cat /etc/sh*dow: name files exactly"),
        ("head /home/u/.s{s,x}h/id_rsa", "head /home/u/.s{s,x}h/id_rsa: name files exactly"),
        ("cat /etc/../etc/shadow", "cat: private keys, password files"),
        # Through .. (relative: where it leads depends on where it runs) and through /proc.
        ("cat ../../etc/shadow", "cat: private keys, password files"),
        ("cat /proc/self/root/etc/shadow", "cat: private keys, password files"),
        ("cat /proc/1234/environ", "cat: private keys, password files"),
        # Two leading slashes: POSIX normpath keeps them, Linux reads the path from /.
        ("cat //proc/self/environ", "cat: private keys, password files"),
        ("cat //etc/shadow", "cat: private keys, password files"),
        ("ls //proc/1/fd", "ls: private keys, password files"),
        ("head ///etc//shadow", "head: private keys, password files"),
    ],
)
def test_node_inspect_refuses_what_is_not_one_read_only_command(command: str, why: str) -> None:
    problem = read_only_problem(command)
    assert problem is not None and problem.startswith(why)


def test_lint_refuses_a_private_path_behind_two_slashes(tmp_path: Path) -> None:
    path = tmp_path / "peek.yaml"
    path.write_text(
        "id: peek\ntitle: Peek\nsteps:\n"
        "  - {id: env, kind: check, command: {node: gpu-a1, run: cat //proc/self/environ}}\n"
        "  - {id: fds, kind: check, command: {node: gpu-a1, run: ls //proc/1/fd}}\n"
    )
    problems = lint([path])
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:4", f"{path}:5"]
    assert all("private keys, password files" in p for p in problems), problems


async def test_node_inspect_refuses_a_private_path_behind_two_slashes_when_planned(
    demo: tuple[Config, SshPool, httpx.AsyncClient],
) -> None:
    with pytest.raises(ActionRefused, match=r"'cat //proc/self/environ' refused: cat: private"):
        await registry(demo).plan(
            "node.inspect", {"node": "gpu-a1", "command": "cat //proc/self/environ"}
        )


@pytest.mark.parametrize(
    "command",
    [
        "sudo -n journalctl -u vllm.service -n 200 --no-pager",
        "journalctl -u vllm.service --since '10 min ago'",
        "systemctl status vllm.service",
        "systemctl --no-pager is-active vllm.service",
        "nvidia-smi",
        "nvidia-smi --query-gpu=name,temperature.gpu --format=csv,noheader -i 0",
        "nvidia-smi -q -d MEMORY",
        "nvidia-smi topo -m",
        "tail -n 50 /var/log/syslog",
        "cat /etc/vllm/args.yaml",
        "df -h",
        "free -g",
        "hostname -f",
        "ls -la '/etc/vllm'",
        "journalctl -b -1 -n all --no-pager",
        "cat /proc/meminfo",
        "journalctl -u vllm -b",
        "journalctl --lines 20 --boot 0123456789abcdef0123456789abcdef-1",
    ],
)
def test_node_inspect_accepts_read_only_commands(command: str) -> None:
    assert read_only_problem(command) is None


# -- routing.set_weights over the real sshd ---------------------------------------------------


@needs_sshd
async def test_set_weights_plans_executes_verifies_and_compensates(
    box: Box,
) -> None:
    reg, sshd = box.reg, box.sshd
    routes = sshd.root / "routes.yaml"
    plan = await reg.plan("routing.set_weights", {"weights": {"primary": 0, "backup": "100"}})
    assert plan.target == "gw-1" and plan.args == {
        "router": "gw-1",
        "weights": {"primary": 0, "backup": 100},
    }
    assert plan.summary == (
        "routing.set_weights on gw-1: primary 100 -> 0, backup (unset) -> 100, then reload"
    )
    assert plan.detail == (
        f"keep {routes} on gw-1 as {routes}.{STAMP}, then write:\n"
        f"--- a/{str(routes).lstrip('/')}\n"
        f"+++ b/{str(routes).lstrip('/')}\n"
        "@@ -2,7 +2,7 @@\n"
        " model_list:\n"
        "   - model_name: chat\n"
        "     model_info: {id: primary}\n"
        '-    litellm_params: {model: openai/llama, api_base: "http://10.0.3.11:8000/v1", '
        "weight: 100}\n"
        '+    litellm_params: {model: openai/llama, api_base: "http://10.0.3.11:8000/v1", '
        "weight: 0}\n"
        "   - model_name: chat\n"
        "     model_info: {id: backup}\n"
        "-    litellm_params: {model: openai/gpt-4o-mini}\n"
        "+    litellm_params: {model: openai/gpt-4o-mini, weight: 100}\n"
        "then run on gw-1: reload-router\n"
    )
    assert reg.compensation(plan, None) == (
        "routing.set_weights",
        {"router": "gw-1", "weights": {"primary": 100, "backup": None}},
    )
    assert routes.read_text() == ROUTES  # planning changed nothing
    routes.chmod(0o640)
    outcome = await reg.execute(plan, confirm(plan))
    assert outcome.ok, outcome.summary
    assert outcome.summary == (
        "routing.set_weights on gw-1: primary=0, backup=100 (was primary=100, backup=(unset)), "
        "reloaded"
    )
    assert outcome.facts["weights_before"] == {"primary": 100, "backup": None}
    assert outcome.facts["weights_after"] == {"primary": 0, "backup": 100}
    assert (sshd.root / "reloads").read_text() == "reloaded\n"
    assert "router reloaded" in outcome.output
    assert Path(f"{routes}.{STAMP}").read_text() == ROUTES
    # Written through a temp file renamed over it, keeping its permission bits (and the
    # backup's); no temp file is left.
    assert routes.stat().st_mode & 0o777 == 0o640
    assert Path(f"{routes}.{STAMP}").stat().st_mode & 0o777 == 0o640
    assert not Path(f"{routes}.llmops-tmp").exists()
    entries = yaml.safe_load(routes.read_text())["model_list"]
    assert [e["litellm_params"].get("weight") for e in entries] == [0, 100]

    undo = reg.compensation(plan, outcome)
    assert undo == (
        "routing.set_weights",
        {"router": "gw-1", "weights": {"primary": 100, "backup": None}},
    )
    back = await reg.plan(*undo)
    assert (await reg.execute(back, confirm(back))).ok
    assert routes.read_text() == ROUTES  # the weight it added is gone again, the rest as it was


@needs_sshd
async def test_set_weights_refusals_say_why(box: Box) -> None:
    reg, sshd = box.reg, box.sshd
    with pytest.raises(
        ActionRefused, match=r"unknown upstream 'primry' .*\(it has: primary, backup\)"
    ):
        await reg.plan("routing.set_weights", {"weights": {"primry": 0}})
    with pytest.raises(
        ActionRefused, match="every weight of every upstream would be 0: no traffic"
    ):
        await reg.plan("routing.set_weights", {"weights": {"primary": 0, "backup": 0}})
    with pytest.raises(ActionRefused, match="weight of primary is -1, not a number >= 0"):
        await reg.plan("routing.set_weights", {"weights": {"primary": -1}})
    with pytest.raises(ActionRefused, match=r"already set \(primary=100\); nothing to do"):
        await reg.plan("routing.set_weights", {"weights": {"primary": 100}})
    with pytest.raises(ActionRefused, match="unknown router 'gw-2'"):
        await reg.plan("routing.set_weights", {"router": "gw-2", "weights": {"primary": 1}})
    assert (sshd.root / "routes.yaml").read_text() == ROUTES


@needs_sshd
async def test_a_failed_reload_reports_stderr_and_leaves_the_undo(
    box: Box,
) -> None:
    reg, sshd = box.reg, box.sshd
    (sshd.root / "fail-reload").touch()
    plan = await reg.plan("routing.set_weights", {"weights": {"backup": 50}})
    outcome = await reg.execute(plan, confirm(plan))
    assert not outcome.ok and outcome.exit_status == 4
    assert outcome.summary == (
        "routing.set_weights on gw-1: `reload-router` exited 4: bad routes; the file is changed"
    )
    assert outcome.undo == {"router": "gw-1", "weights": {"backup": None}}


@needs_sshd
async def test_set_weights_in_a_json_router_file(sshd: Sshd, tmp_path: Path) -> None:
    config = sshd_config(sshd, tmp_path, "json")
    pool = SshPool(ssh_target(config, r) for r in config.routers)
    async with httpx.AsyncClient() as http:
        reg = Registry(config, pool, http)
        plan = await reg.plan("routing.set_weights", {"weights": {"primary": 25, "backup": 75}})
        outcome = await reg.execute(plan, confirm(plan))
    await pool.close()
    assert outcome.ok, outcome.summary
    entries = json.loads((sshd.root / "routes.json").read_text())["model_list"]
    assert [e["litellm_params"]["weight"] for e in entries] == [25, 75]


# -- http.request and incident.note -----------------------------------------------------------


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


async def test_http_request_masks_the_secret_and_sends_the_real_value(
    demo: tuple[Config, SshPool, httpx.AsyncClient],
    loopback: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "Bearer adm1n-0f-the-gateway-7c1e"
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", secret)
    reg = registry(demo)
    call = {
        "method": "post",
        "url": f"{loopback.url}/admin/drain",
        "headers": {"X-Request-Reason": "incident 42"},
        "header_env": {"Authorization": "GATEWAY_ADMIN_TOKEN"},
        "json": {"upstream": "primary", "drain": True},
    }
    plan = await reg.plan("http.request", call)
    assert plan.mutating and plan.target == "127.0.0.1"
    assert plan.detail == (
        f"POST {loopback.url}/admin/drain\n"
        "X-Request-Reason: incident 42\n"
        "Authorization: ***\n"
        "\n"
        '{\n  "upstream": "primary",\n  "drain": true\n}'
    )
    assert secret not in json.dumps(plan.args, default=str)
    with pytest.raises(ActionRefused, match="not confirmed"):
        await reg.execute(plan, None)
    outcome = await reg.execute(plan, confirm(plan))
    assert outcome.ok and outcome.facts == {"status": 200}
    assert outcome.summary == f"http.request: POST {loopback.url}/admin/drain: HTTP 200 OK"
    received = loopback.received_headers[-1]
    assert received["Authorization"] == secret
    assert received["X-Request-Reason"] == "incident 42"
    assert secret not in outcome.output and secret not in outcome.summary
    # A server that echoes the header back does not put it in the outcome either.
    loopback.raw_stream = f"data: you sent {secret}\n\n".encode()
    again = await reg.plan("http.request", call)
    echoed = await reg.execute(again, confirm(again))
    assert echoed.ok and "you sent ***" in echoed.output and secret not in echoed.output


async def test_http_get_needs_no_confirmation_and_its_body_is_bounded(
    demo: tuple[Config, SshPool, httpx.AsyncClient], loopback: LoopbackServer
) -> None:
    loopback.metrics_text = "x" * 100_000
    reg = registry(demo, read_only=True)
    plan = await reg.plan("http.request", {"method": "GET", "url": f"{loopback.url}/status"})
    assert not plan.mutating
    outcome = await reg.execute(plan, None)
    assert outcome.ok
    assert outcome.summary.endswith("HTTP 200 OK (body cut at 64 KiB)")
    assert outcome.output == "x" * 65536 + "\n[body cut at 65536 bytes]"
    loopback.status = 503
    plan = await reg.plan("http.request", {"method": "GET", "url": f"{loopback.url}/status"})
    assert not (await reg.execute(plan, None)).ok


async def test_http_request_refuses_a_missing_variable_and_a_credential_in_the_url(
    demo: tuple[Config, SshPool, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    reg = registry(demo)
    with pytest.raises(ActionRefused, match="environment variable NOT_SET_ANYWHERE"):
        await reg.plan(
            "http.request",
            {
                "method": "POST",
                "url": "http://127.0.0.1:9/x",
                "header_env": {"X-Key": "NOT_SET_ANYWHERE"},
            },
        )
    with pytest.raises(ActionRefused, match="the URL holds a credential"):
        await reg.plan("http.request", {"method": "GET", "url": "http://admin:hunter2@127.0.0.1/"})


async def test_incident_note_calls_the_note_callback(
    demo: tuple[Config, SshPool, httpx.AsyncClient],
) -> None:
    noted: list[str] = []

    async def note(text: str) -> None:
        noted.append(text)

    reg = registry(demo, note=note, read_only=True)
    plan = await reg.plan("incident.note", {"text": "drained gpu-a1"})
    assert not plan.mutating and plan.target is None
    outcome = await reg.execute(plan, None)
    assert outcome == Outcome(
        True, "incident.note: noted: drained gpu-a1", duration_s=outcome.duration_s
    )
    assert noted == ["drained gpu-a1"]


async def test_set_args_waits_for_an_engine_on_the_nodes_localhost_through_the_forward(
    fleet: DemoFleet, demo: tuple[Config, SshPool, httpx.AsyncClient]
) -> None:
    """engine: {via_ssh: true}: the version check and the health wait after the restart go
    through a local forward over the node's connection, not to the engine's own address."""
    config, pool, http = demo
    node = config.node("gpu-a1")
    assert node.engine is not None
    engine = node.engine.model_copy(update={"via_ssh": True})
    nodes = tuple(n.model_copy(update={"engine": engine}) if n is node else n for n in config.nodes)
    reg = Registry(
        config.model_copy(update={"nodes": nodes}), pool, http, clock=lambda: FIXED_CLOCK_S
    )
    plan = await reg.plan(
        "engine.set_args", {"node": "gpu-a1", "set": {"max-num-batched-tokens": 2048}}
    )
    assert "(through an SSH forward)" in plan.detail
    outcome = await reg.execute(plan, confirm(plan))
    assert outcome.ok, outcome.summary
    assert running(fleet).max_num_batched_tokens == 2048
    forwards = pool.connection("gpu-a1")._forwards
    port = int(engine.url.rsplit(":", 1)[1])
    assert list(forwards) == [("127.0.0.1", port)]
