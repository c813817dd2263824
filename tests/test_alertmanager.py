"""Alertmanager as a source and a target, against the real ``prometheus-alertmanager``.

Alerts posted to it come out of the hub as the console's own alert events, mapped to nodes
and endpoints with their runbooks; an alert that ends resolves; the alert.silence action
makes a silence Alertmanager shows as active, and its compensation expires it; read-only
mode refuses it; a dead Alertmanager is one failed, stale source. One server for the module
(each test uses alert names of its own), a private one for the test that kills it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from backends.alertmanager import AlertmanagerClient, AlertmanagerError, AmAlert, rfc3339
from backends.ssh import SshPool
from console.actions import ActionRefused, AlreadyDone, Confirmation, Plan, Registry
from console.alertmanager_source import (
    AlertmanagerTracker,
    runbook_from_url,
    severity_of,
)
from console.alerts import AlertEvent
from console.config import Config, ConfigError, load_config
from console.hub import Hub
from console.incidents import operator
from console.runbook import load_runbook
from console.store import Store
from tests.alertmanager_server import needs_alertmanager, running_alertmanager
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port

CONFIG = """\
environment: test
nodes:
  - {{name: gpu-a1, host: 10.0.3.11}}
  - {{name: gpu-a2, host: gpu-a2.internal}}
endpoints:
  - {{name: chat-api, kind: openai, base_url: "http://127.0.0.1:9/v1", model: m}}
alertmanager:
  url: {url}
  timeout: 2s
  every: 1s
{extra}"""


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url=url, extra=extra))
    return path


def config_for(tmp_path: Path, url: str, extra: str = "") -> Config:
    return load_config(write_config(tmp_path, url, extra))


@pytest.fixture(scope="module")
def am_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Alertmanager for the module: each start costs a process."""
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as url:
        yield url


def post_alerts(url: str, *alerts: Mapping[str, object]) -> None:
    response = httpx.post(f"{url}/api/v2/alerts", json=list(alerts), timeout=5)
    assert response.status_code == 200, response.text


def ended(alert: Mapping[str, object]) -> dict[str, object]:
    """The same alert, ended a minute ago: Alertmanager resolves it."""
    return {**alert, "endsAt": rfc3339(time.time() - 60)}


def unique(name: str) -> str:
    """An alert name no other test of the module uses."""
    return f"{name}{uuid.uuid4().hex[:8]}"


class Listener:
    """The alert events the hub published, as `llmops watch` is told them."""

    def __init__(self, hub: Hub, prefix: str) -> None:
        self.prefix = prefix
        self.events: list[AlertEvent] = []
        hub.alert_listeners.append(self.heard)

    def heard(self, event: AlertEvent) -> None:
        if event.rule.startswith(self.prefix):  # the module's server holds others' alerts too
            self.events.append(event)

    def take(self) -> list[AlertEvent]:
        taken, self.events = self.events, []
        return taken


@pytest.fixture
async def hub(am_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    store = Store(tmp_path / "am.db")
    hub = Hub(config_for(tmp_path, am_url), store)
    yield hub
    await hub.stop()
    store.close()


# --- alerts in ---------------------------------------------------------------------------------


@needs_alertmanager
async def test_posted_alerts_fire_as_the_consoles_own_mapped_to_node_endpoint_and_fleet(
    am_url: str, hub: Hub
) -> None:
    name = unique("VLLMHighLatency")
    listener = Listener(hub, f"am.{name}")
    post_alerts(
        am_url,
        {
            "labels": {"alertname": name, "instance": "10.0.3.11:9100", "severity": "critical"},
            "annotations": {
                "summary": "p95 latency 6.2s on gpu-a1",
                "runbook_url": "https://wiki.internal/runbooks/latency-spike.md#first-steps",
            },
        },
        {
            "labels": {"alertname": f"{name}Api", "endpoint": "chat-api", "severity": "warning"},
            "annotations": {"description": "error rate 12%", "runbook": "provider-failover"},
        },
        {"labels": {"alertname": f"{name}Fleet", "cluster": "eu-1"}},
    )
    await hub.poll_once("alertmanager")
    events = {e.rule: e for e in listener.take()}
    assert sorted(events) == [f"am.{name}", f"am.{name}Api", f"am.{name}Fleet"]
    node, api, fleet = events[f"am.{name}"], events[f"am.{name}Api"], events[f"am.{name}Fleet"]
    assert (node.kind, node.subject_kind, node.subject) == ("alert.firing", "node", "gpu-a1")
    assert (node.severity, node.runbook) == ("page", "latency-spike")
    assert node.message == f"am.{name} firing on node gpu-a1: p95 latency 6.2s on gpu-a1"
    assert node.labels["instance"] == "10.0.3.11:9100"
    assert node.source == f"alert:am.{name}:gpu-a1"
    assert (api.subject_kind, api.subject, api.severity) == ("endpoint", "chat-api", "ticket")
    assert api.runbook == "provider-failover"
    assert api.message == f"am.{name}Api firing on endpoint chat-api: error rate 12%"
    assert (fleet.subject_kind, fleet.subject, fleet.runbook) == ("fleet", f"{name}Fleet", None)
    assert "fleet-wide: no node or endpoint label matched" in fleet.message
    # Still firing at the next poll: no second event (one incident, not one per poll).
    await hub.poll_once("alertmanager")
    assert listener.take() == []
    # And in the incident log.
    await hub.flush()
    assert hub.store is not None
    logged = [e for e in hub.store.events() if str(e["source"]).startswith(f"alert:am.{name}")]
    assert {(e["kind"], e["source"]) for e in logged} >= {
        ("alert.firing", f"alert:am.{name}:gpu-a1")
    }


@needs_alertmanager
async def test_an_alert_that_ends_resolves_and_two_gpus_of_a_node_are_one_alert(
    am_url: str, hub: Hub
) -> None:
    name = unique("GpuHot")
    listener = Listener(hub, f"am.{name}")
    gpu0 = {"labels": {"alertname": name, "node": "gpu-a2", "gpu": "0"}}
    gpu1 = {"labels": {"alertname": name, "hostname": "gpu-a2.internal", "gpu": "1"}}
    post_alerts(am_url, gpu0, gpu1)
    await hub.poll_once("alertmanager")
    (firing,) = listener.take()
    assert (firing.kind, firing.subject, firing.message) == (
        "alert.firing",
        "gpu-a2",
        f"am.{name} firing on node gpu-a2: {name}",  # no summary: the alert's name
    )
    post_alerts(am_url, ended(gpu0))
    await hub.poll_once("alertmanager")
    assert listener.take() == []  # GPU 1 still fires
    post_alerts(am_url, ended(gpu1))
    await hub.poll_once("alertmanager")
    (resolved,) = listener.take()
    assert (resolved.kind, resolved.subject, resolved.message) == (
        "alert.resolved",
        "gpu-a2",
        f"am.{name} resolved on node gpu-a2: {name}",
    )


@needs_alertmanager
async def test_a_dead_alertmanager_is_one_stale_source_and_resolves_nothing(
    tmp_path: Path,
) -> None:
    with running_alertmanager(tmp_path / "private") as url:  # its own: this test stops it
        hub = Hub(config_for(tmp_path, url))
        listener = Listener(hub, "am.")
        post_alerts(url, {"labels": {"alertname": "NodeDown", "node": "gpu-a1"}})
        await hub.poll_once("alertmanager")
        assert [e.kind for e in listener.take()] == ["alert.firing"]
    try:  # the server is gone: the port is closed
        await hub.poll_once("alertmanager")
        await hub.poll_once("alertmanager")
        status = hub.scheduler.status("alertmanager")
        assert status.consecutive_failures == 2
        assert status.last_error == (
            f"alertmanager {url}: GET /api/v2/alerts: connection refused or host unreachable"
        )
        # Missing data is no recovery: the alert is not resolved by a poll that failed.
        assert listener.take() == []
        # The rest of the hub goes on: a snapshot is still made, with the source in it.
        (shown,) = [s for s in hub.snapshot().sources if s.name == "alertmanager"]
        assert shown.last_error == status.last_error
    finally:
        await hub.stop()


async def test_a_never_reached_alertmanager_is_stale_from_the_first_poll(tmp_path: Path) -> None:
    hub = Hub(config_for(tmp_path, f"http://127.0.0.1:{free_port()}"))
    try:
        await hub.poll_once("alertmanager")
        status = hub.scheduler.status("alertmanager")
        assert status.stale and "connection refused" in str(status.last_error)
    finally:
        await hub.stop()


async def test_client_errors_are_one_line_naming_the_url_and_what_failed() -> None:
    server = LoopbackServer()
    try:
        async with httpx.AsyncClient() as http:
            client = AlertmanagerClient(http, server.url, timeout_s=2)
            server.metrics_text = "not json"  # what the loopback serves on any GET
            server.status = 500
            with pytest.raises(AlertmanagerError) as caught:
                await client.alerts()
            assert str(caught.value).startswith(
                f"alertmanager {server.url}: GET /api/v2/alerts: HTTP 500"
            )
            assert caught.value.status == 500
            server.status = 200
            with pytest.raises(AlertmanagerError, match=r": the reply is not JSON$"):
                await client.alerts()
            server.metrics_text = '{"alerts": []}'
            with pytest.raises(AlertmanagerError, match=r"malformed reply: not a list of alerts$"):
                await client.alerts()
    finally:
        server.close()


# --- the mapping, without a server -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "runbook"),
    [
        ("https://wiki/runbooks/latency-spike.md#step-2", "latency-spike"),
        ("https://git/ops/runbooks/blob/main/model-rollback.yaml?plain=1", "model-rollback"),
        ("https://wiki/runbooks/provider-failover/", "provider-failover"),
        ("https://wiki/runbooks/kv%20cache", None),  # not a runbook id
    ],
)
def test_a_runbook_url_names_the_runbook_by_its_last_segment(url: str, runbook: str) -> None:
    assert runbook_from_url(url) == runbook


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", "page"),
        ("PAGE", "page"),
        ("warning", "ticket"),
        ("none", "info"),
        ("", "ticket"),
    ],
)
def test_severity_labels_map_to_the_consoles_severities(label: str, severity: str) -> None:
    alert = AmAlert("f", {"alertname": "A", "severity": label}, {}, "", "", "active")
    assert severity_of(alert) == severity


def test_node_labels_are_configurable_and_a_secret_looking_summary_is_not_repeated(
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9", "  node_labels: [machine]\n")
    tracker = AlertmanagerTracker(config)
    token = "sk-proj-0123456789abcdefghijklmnop"
    alert = AmAlert(
        "f1",
        {"alertname": "Disk", "machine": "gpu-a1", "node": "gpu-a2"},
        {"summary": f"token {token} leaked"},
        "",
        "",
        "active",
    )
    (event,) = tracker.update([alert], 1.0)
    assert (event.subject_kind, event.subject) == ("node", "gpu-a1")
    assert token not in event.message and event.message == "am.Disk firing on node gpu-a1: Disk"


# --- silences out ------------------------------------------------------------------------------


def confirm(plan: Plan) -> Confirmation:
    """What the engineer's yes is: the operator and the digest of the plan shown."""
    return Confirmation(operator(), Registry.digest(plan), None)


@needs_alertmanager
async def test_a_silence_made_by_the_action_is_active_and_its_compensation_expires_it(
    am_url: str, hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("QueueDeep")
    token = "Bearer am-0123456789abcdefghijklmnopqrstuv"
    monkeypatch.setenv("AM_AUTH", token)
    config = config_for(tmp_path, am_url, "  header_env: {Authorization: AM_AUTH}\n")
    listener = Listener(hub, f"am.{name}")
    post_alerts(am_url, {"labels": {"alertname": name, "instance": "10.0.3.11:8000"}})
    await hub.poll_once("alertmanager")
    assert [e.kind for e in listener.take()] == ["alert.firing"]

    async with httpx.AsyncClient() as http:
        registry = Registry(config, SshPool([]), http)
        matchers = {"alertname": name, "instance": "~10\\.0\\.3\\.11:.*"}
        plan = await registry.plan(
            "alert.silence", {"matchers": matchers, "duration": "2h", "comment": "drill"}
        )
        # The dry-run: the exact request, its secret header masked.
        assert plan.mutating and plan.target == "127.0.0.1"
        lines = plan.detail.splitlines()
        assert lines[:3] == [
            f"POST {am_url}/api/v2/silences",
            "Authorization: ***",
            "Content-Type: application/json",
        ]
        assert token not in plan.detail and "am-0123456789" not in plan.detail
        assert f'"createdBy": "{operator()}"' in plan.detail
        assert '"name": "instance",\n      "value": "10\\\\.0\\\\.3\\\\.11:.*",' in plan.detail
        assert '"isRegex": true' in plan.detail
        with pytest.raises(ActionRefused, match="not confirmed"):
            await registry.execute(plan, None)

        outcome = await registry.execute(plan, confirm(plan))
        assert outcome.ok, outcome.summary
        silence_id = outcome.facts["silence_id"]
        assert outcome.facts["alertmanager"] == am_url
        assert outcome.undo == {"silence_id": silence_id}
        seen = httpx.get(f"{am_url}/api/v2/silence/{silence_id}").json()
        assert seen["status"]["state"] == "active"
        assert (seen["createdBy"], seen["comment"]) == (operator(), "drill")
        assert {(m["name"], m["value"], m["isRegex"]) for m in seen["matchers"]} == {
            ("alertname", name, False),
            ("instance", "10\\.0\\.3\\.11:.*", True),
        }
        # Silenced, the alert notifies no more: said so, not passed off as resolved.
        await hub.poll_once("alertmanager")
        (muted,) = listener.take()
        assert muted.kind == "alert.resolved"
        assert muted.message == f"am.{name} silenced ({silence_id}) on node gpu-a1: {name}"

        undo = registry.compensation(plan, outcome)
        assert undo == ("alert.expire_silence", {"silence_id": silence_id})
        expire = await registry.plan(*undo)
        assert expire.detail == f"DELETE {am_url}/api/v2/silence/{silence_id}\nAuthorization: ***"
        assert "created by" in expire.notes[0] and "drill" in expire.notes[0]
        expired = await registry.execute(expire, confirm(expire))
        assert expired.ok, expired.summary
        assert expired.facts == {
            "silence_id": silence_id,
            "alertmanager": am_url,
            "ends_at": expired.facts["ends_at"],
        }
        seen = httpx.get(f"{am_url}/api/v2/silence/{silence_id}").json()
        assert seen["status"]["state"] == "expired"
        # Undone already: nothing to do again (a rollback after a manual expiry passes).
        with pytest.raises(AlreadyDone, match="expired already"):
            await registry.plan(*undo)
    # Unsilenced, it fires again.
    await hub.poll_once("alertmanager")
    assert [e.kind for e in listener.take()] == ["alert.firing"]


@needs_alertmanager
async def test_read_only_refuses_a_silence_and_none_is_made(am_url: str, tmp_path: Path) -> None:
    comment = f"read-only {uuid.uuid4().hex}"
    config = config_for(tmp_path, am_url)
    async with httpx.AsyncClient() as http:
        registry = Registry(config, SshPool([]), http, read_only=True)
        plan = await registry.plan(
            "alert.silence",
            {"matchers": {"alertname": "Anything"}, "duration": "10m", "comment": comment},
        )
        with pytest.raises(ActionRefused, match=r"^read-only mode: alert.silence on 127.0.0.1"):
            await registry.execute(plan, confirm(plan))
    silences = httpx.get(f"{am_url}/api/v2/silences").json()
    assert [s for s in silences if s["comment"] == comment] == []


@pytest.mark.parametrize(
    ("matchers", "why"),
    [
        ({"alertname": "~.*"}, "every matcher matches an empty label"),
        ({"alertname": "~("}, "is not a regex"),
        ({"bad-name": "x"}, "'bad-name' is not a label name"),
        ({"alertname": {"regex": "a", "value": "b"}}, "expected {value: TEXT} or {regex: REGEX}"),
        ({}, "none given"),
    ],
)
async def test_a_silence_that_alertmanager_would_refuse_is_refused_when_planned(
    tmp_path: Path, matchers: dict[str, object], why: str
) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")
    async with httpx.AsyncClient() as http:
        registry = Registry(config, SshPool([]), http)
        with pytest.raises(
            ActionRefused, match=f"^alert.silence: matchers.*{why.replace('{', '.')}"
        ):
            await registry.plan(
                "alert.silence", {"matchers": matchers, "duration": "1h", "comment": "c"}
            )


async def test_without_an_alertmanager_section_the_action_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(CONFIG.format(url="x", extra="").split("alertmanager:")[0])
    async with httpx.AsyncClient() as http:
        registry = Registry(load_config(path), SshPool([]), http)
        with pytest.raises(ActionRefused, match="the config has no alertmanager: section"):
            await registry.plan(
                "alert.silence", {"matchers": {"a": "b"}, "duration": "1h", "comment": "c"}
            )


def test_a_runbook_step_silences_and_inherits_the_expiry_as_its_rollback(tmp_path: Path) -> None:
    path = tmp_path / "silence.yaml"
    path.write_text(
        "id: quiet-node\n"
        "title: Silence a node's alerts while it is worked on\n"
        "params:\n"
        "  node: {type: node, required: true}\n"
        "steps:\n"
        "  - id: silence\n"
        "    kind: mutate\n"
        "    action: alert.silence\n"
        "    with:\n"
        '      matchers: {node: "{{ node }}", alertname: {regex: "VLLM.*"}}\n'
        "      duration: 1h\n"
        '      comment: "maintenance of {{ node }}"\n'
    )
    (step,) = load_runbook(path).steps
    assert step.rollback is not None and step.rollback.action == "alert.expire_silence"


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("alertmanager: {url: ftp://x}", 7, "alertmanager.url: 'ftp://x' is not a URL"),
        (
            "alertmanager:\n  url: http://am:9093\n  timeout: soon",
            9,
            "alertmanager.timeout: 'soon' is not a duration",
        ),
        (
            "alertmanager:\n  url: http://am:9093/api/v2/alerts",
            8,
            "alertmanager.url: 'http://am:9093/api/v2/alerts' ends in 'alerts'",
        ),
        (
            "alertmanager:\n  url: http://am:9093\n  header_env: {Authorization: lower}",
            9,
            "alertmanager.header_env.Authorization: 'lower' is not valid",
        ),
    ],
)
def test_a_broken_alertmanager_section_is_one_file_line_error(
    tmp_path: Path, section: str, line: int, message: str
) -> None:
    path = tmp_path / "config.yaml"
    head = CONFIG.format(url="x", extra="").split("alertmanager:")[0]
    path.write_text(head + section + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:{line}: {message}"), problem


def test_the_section_has_its_defaults(tmp_path: Path) -> None:
    am = config_for(tmp_path, "https://am.example").alertmanager
    assert am is not None
    assert (am.timeout_s, am.every_s) == (2.0, 1.0)  # as written
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text(
        CONFIG.format(url="", extra="").split("alertmanager:")[0]
        + "alertmanager: {url: 'http://am:9093'}\n"
    )
    default = load_config(plain / "config.yaml").alertmanager
    assert default is not None
    assert (default.timeout_s, default.every_s, default.endpoint_label) == (5.0, 15.0, "endpoint")
    assert default.node_labels == ("node", "instance", "host", "hostname")
