"""Alertmanager's alerts as the console's own alert events.

Each poll reads the alerts Alertmanager holds (backends/alertmanager.py) and
:class:`AlertmanagerTracker` diffs them with the last poll's: an alert that notifies now and
did not before fires (``alert.firing``), one that no longer does resolves (``alert.resolved``,
whose message says when it was silenced or inhibited rather than resolved). A failed poll
changes nothing, since missing data is no recovery.

Mapping (the config's ``alertmanager:`` section):

* rule: ``am.`` + the ``alertname`` label, so it never collides with the console's rules;
* subject: a node when one of ``node_labels`` (first match wins) is a node's name or its host
  (an ``instance`` such as ``10.0.3.11:9100`` loses its port); else an endpoint when the
  ``endpoint_label`` is an endpoint's name; else the fleet, named by the alertname;
* severity: ``critical``/``page`` -> page, ``warning``/``ticket`` -> ticket, ``info``/``none``
  -> info, anything else ticket;
* runbook: a ``runbook`` label or annotation, else the last path segment of ``runbook_url``
  (``.../latency-spike.md#step-2`` -> ``latency-spike``);
* message: the ``summary`` annotation, else ``description``, else the alertname (never one
  that looks like a secret), with the subject.

Alerts of one rule on one subject (two GPUs of one node) are one alert here, as the console's
own rules are: it fires with the first and resolves with the last. Nothing here talks to the
world but :func:`alertmanager_source`'s poll.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from backends.alertmanager import AlertmanagerClient, AmAlert
from console.alerts import AlertEvent
from console.config import Config
from console.redact import looks_secret
from console.scheduler import Source

SOURCE = "alertmanager"  # the scheduler's source name
RULE_PREFIX = "am."
DEFAULT_NODE_LABELS = ("node", "instance", "host", "hostname")
DEFAULT_ENDPOINT_LABEL = "endpoint"
MAX_MESSAGE_CHARS = 240
_SEVERITY = {
    "critical": "page",
    "page": "page",
    "warning": "ticket",
    "ticket": "ticket",
    "info": "info",
    "none": "info",
}
_RUNBOOK_ID = re.compile(r"[A-Za-z0-9._-]+")
_RUNBOOK_SUFFIXES = (".yaml", ".yml", ".md")
_PORT = re.compile(r":\d+$")

Key = tuple[str, str, str]  # rule, subject kind, subject


@dataclass
class _Firing:
    """One rule on one subject: the alerts (fingerprints) behind it, and its first event."""

    fingerprints: set[str]
    event: AlertEvent


class AlertmanagerTracker:
    """Turns successive polls of Alertmanager's alerts into firing and resolved events."""

    def __init__(self, config: Config) -> None:
        am = config.alertmanager
        self.node_labels = am.node_labels if am is not None else DEFAULT_NODE_LABELS
        self.endpoint_label = am.endpoint_label if am is not None else DEFAULT_ENDPOINT_LABEL
        # A node is named by its name or its host; the names are checked first.
        self._nodes: dict[str, str] = {n.host.strip("[]"): n.name for n in config.nodes}
        self._nodes.update({n.name: n.name for n in config.nodes})
        self._endpoints = {e.name for e in config.endpoints}
        self._firing: dict[Key, _Firing] = {}

    @property
    def firing(self) -> list[AlertEvent]:
        """The firing event of each rule and subject that fires now."""
        return [f.event for f in self._firing.values()]

    def update(self, alerts: Sequence[AmAlert], now: float) -> list[AlertEvent]:
        """One successful poll's alerts; the events of what fired or resolved since the last."""
        notifying: dict[Key, list[AmAlert]] = {}
        suppressed: dict[str, AmAlert] = {}
        for alert in alerts:
            if alert.suppressed:
                suppressed[alert.fingerprint] = alert
            else:
                notifying.setdefault(self._key(alert), []).append(alert)
        events = []
        for key, group in notifying.items():
            fingerprints = {a.fingerprint for a in group}
            current = self._firing.get(key)
            if current is not None:
                current.fingerprints = fingerprints
                continue
            event = self._event("alert.firing", key, group[0], now)
            self._firing[key] = _Firing(fingerprints, event)
            events.append(event)
        for key in [k for k in self._firing if k not in notifying]:
            gone = self._firing.pop(key)
            muted = [suppressed[f] for f in sorted(gone.fingerprints) if f in suppressed]
            events.append(self._resolved(gone.event, muted, now))
        return events

    # -- mapping

    def _key(self, alert: AmAlert) -> Key:
        kind, subject = self.subject_of(alert)
        return rule_of(alert), kind, subject

    def subject_of(self, alert: AmAlert) -> tuple[str, str]:
        """(``node``, ``endpoint`` or ``fleet``, the subject's name)."""
        labels = alert.labels
        for label in self.node_labels:
            value = labels.get(label, "").strip()
            if not value:
                continue
            node = self._nodes.get(value) or self._nodes.get(_host_of(value))
            if node is not None:
                return "node", node
        endpoint = labels.get(self.endpoint_label, "").strip()
        if endpoint in self._endpoints:
            return "endpoint", endpoint
        return "fleet", alertname(alert)

    def _event(self, kind: str, key: Key, alert: AmAlert, now: float) -> AlertEvent:
        rule, subject_kind, subject = key
        what = _what(alert)
        if subject_kind == "fleet":
            where = " (fleet-wide: no node or endpoint label matched)"
        else:
            where = f" on {subject_kind} {subject}"
        return AlertEvent(
            kind=kind,
            rule=rule,
            subject_kind=subject_kind,
            subject=subject,
            severity=severity_of(alert),
            at=now,
            message=_cut(f"{rule} firing{where}: {what}"),
            runbook=runbook_of(alert),
            labels=dict(alert.labels),
        )

    def _resolved(self, firing: AlertEvent, muted: Iterable[AmAlert], now: float) -> AlertEvent:
        muted = list(muted)
        silences = sorted({s for a in muted for s in a.silenced_by})
        if silences:
            how = f"silenced ({', '.join(silences)})"
        elif muted:
            how = "inhibited"
        else:
            how = "resolved"
        message = firing.message.replace(f"{firing.rule} firing", f"{firing.rule} {how}", 1)
        return AlertEvent(
            kind="alert.resolved",
            rule=firing.rule,
            subject_kind=firing.subject_kind,
            subject=firing.subject,
            severity=firing.severity,
            at=now,
            message=_cut(message),
            runbook=firing.runbook,
            labels=dict(firing.labels),
        )


def alertname(alert: AmAlert) -> str:
    name = alert.labels.get("alertname", "").strip()
    return name or f"fingerprint-{alert.fingerprint}"


def rule_of(alert: AmAlert) -> str:
    return RULE_PREFIX + alertname(alert)


def severity_of(alert: AmAlert) -> str:
    return _SEVERITY.get(alert.labels.get("severity", "").strip().lower(), "ticket")


def runbook_of(alert: AmAlert) -> str | None:
    """The runbook id an alert names: ``runbook``, else the end of ``runbook_url``."""
    for values in (alert.labels, alert.annotations):
        named = values.get("runbook", "").strip()
        if _RUNBOOK_ID.fullmatch(named):
            return named
    for values in (alert.labels, alert.annotations):
        url = values.get("runbook_url", "").strip()
        if url:
            found = runbook_from_url(url)
            if found is not None:
                return found
    return None


def runbook_from_url(url: str) -> str | None:
    """``https://wiki/runbooks/latency-spike.md#step-2`` -> ``latency-spike``."""
    try:
        path = urlsplit(url).path  # without its ?query and #fragment
    except ValueError:
        return None
    segment = next((s for s in reversed(path.split("/")) if s), "")
    for suffix in _RUNBOOK_SUFFIXES:
        if segment.lower().endswith(suffix):
            segment = segment[: -len(suffix)]
            break
    return segment if _RUNBOOK_ID.fullmatch(segment) else None


def _host_of(value: str) -> str:
    """An ``instance`` label's host: ``10.0.3.11:9100`` -> ``10.0.3.11``, ``[::1]:9100`` ->
    ``::1``."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return _PORT.sub("", value)
    return value  # a bare IPv6 address has colons and no port


def _what(alert: AmAlert) -> str:
    """What the alert says, in one line: its summary, else its description, else its name.
    An annotation that looks like a credential is not repeated (the message is logged)."""
    for key in ("summary", "description"):
        text = " ".join(alert.annotations.get(key, "").split())
        if text and not looks_secret(text):
            return text
    return alertname(alert)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def alertmanager_source(
    config: Config,
    http: httpx.AsyncClient,
    clock: Callable[[], float],
    publish: Callable[[AlertEvent], None],
) -> Source:
    """The hub's ``alertmanager`` source: each poll reads the alerts and publishes what fired
    or resolved. A failed poll raises (the scheduler marks the source failed, then stale) and
    leaves the tracker as it was."""
    am = config.alertmanager
    assert am is not None  # the hub builds this source only for a config with the section
    client = AlertmanagerClient(http, am.url, timeout_s=am.timeout_s, header_env=am.header_env)
    tracker = AlertmanagerTracker(config)

    async def poll() -> None:
        # Silenced and inhibited ones too, so that the tracker can say why one stopped.
        alerts = await client.alerts(silenced=True, inhibited=True)
        for event in tracker.update(alerts, clock()):
            publish(event)

    return Source(SOURCE, am.every_s, poll)
