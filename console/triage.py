"""From an alert to an incident: what the alert's target affects, which runbooks the evidence
points to now, and the incident log's open-or-join.

A runbook declares its evidence under ``answers.evidence``: conditions on figures read on the
incident's affected subjects of a kind (``node: "*"``: each affected node). When an incident
opens, every runbook is ranked by the share of its evidence that holds now (then by how many
conditions hold, then whether the alert's rule names it, then whether it answers the rule's
figure); the figures are shown with each condition, and the runbook's node, endpoint and
upstream parameters are prefilled from the target. The ranking is logged with the incident,
so the record shows what the engineer was shown, with the figures as they were.

:meth:`IncidentDesk.prepare` reads figures (in memory, on the hub's loop);
:meth:`IncidentDesk.record` writes (SQLite, in a worker thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from console.alerts import AlertEvent
from console.config import STALE, Config
from console.facts import Figure, FigureReader, figure_text
from console.incidents import IncidentLog
from console.models import FleetSnapshot
from console.runbook import Condition, Runbook

SUGGESTED = 3  # runbooks named in the incident's event; the screen shows every ranked one
# Facts that pick the subject something is wrong with: a parameter defaulting to one of them
# is prefilled with the incident's target instead (console/facts.py FACTS).
CULPRIT_FACTS = frozenset(
    {"worst_itl_node", "worst_ttft_node", "worst_e2e_node", "failing_upstream", "unpinned_node"}
)


def alert_key(event: AlertEvent) -> str:
    """The rule and its subject: the same alert firing again joins the open incident."""
    return f"{event.rule}|{event.subject_kind}|{event.subject}"


def affected(config: Config, kind: str, subject: str) -> dict[str, list[str]]:
    """The endpoints and nodes an alert's subject touches: a node and the endpoints it serves,
    an endpoint and its nodes, an upstream and where its figures come from."""
    nodes: set[str] = set()
    endpoints: set[str] = set()
    if kind == "node":
        nodes.add(subject)
        endpoints.update(e.name for e in config.endpoints if subject in e.nodes)
    elif kind == "endpoint":
        endpoints.add(subject)
        for endpoint in config.endpoints:
            if endpoint.name == subject:
                nodes.update(endpoint.nodes)
    elif kind == "upstream":
        router = config.upstream_router(subject)
        source = router.upstreams[subject] if router is not None else None
        if source is not None and source.node is not None:
            return affected(config, "node", source.node)
        if source is not None and source.endpoint is not None:
            return affected(config, "endpoint", source.endpoint)
    # The upstreams whose figures come from what is affected: a failover moves their traffic.
    upstreams = {
        name
        for router in config.routers
        for name, source in router.upstreams.items()
        if source.node in nodes or source.endpoint in endpoints
    }
    return {"endpoints": sorted(endpoints), "nodes": sorted(nodes), "upstreams": sorted(upstreams)}


@dataclass(frozen=True)
class EvidenceLine:
    """One condition of a runbook's evidence as it stood: the worst affected subject's figure."""

    figure: str
    subject_kind: str
    subject: str | None  # the affected subject the figure is shown for; None: none known
    bound: str  # "above 75 ms"
    holds: bool | None  # None: not known (no such subject affected, or no figure yet)
    shown: str  # "itl_p95 of gpu-a2 412 ms (above 75 ms)"


@dataclass(frozen=True)
class Suggestion:
    runbook: str
    title: str
    held: int
    of: int
    linked: bool  # the alert's rule names it (runbook:)
    answers_alert: bool  # its answers.alerts names the rule's figure
    evidence: tuple[EvidenceLine, ...]
    params: dict[str, str]  # prefilled from the incident's target

    @property
    def share(self) -> float:
        return self.held / self.of if self.of else 0.0

    @property
    def why(self) -> str:
        reasons = [f"{self.held} of {self.of} evidence holds"] if self.of else []
        if self.linked:
            reasons.append("the alert's rule names it")
        if self.answers_alert:
            reasons.append("it answers this alert")
        return "; ".join(reasons) or "no evidence declared"


def rank(
    runbooks: Mapping[str, Runbook],
    figures: FigureReader,
    snapshot: FleetSnapshot,
    event: AlertEvent,
    touched: Mapping[str, list[str]],
    figure_of_rule: str | None,
) -> list[Suggestion]:
    """Every runbook that has evidence, is named by the rule, or answers its figure; best
    first. A runbook none of this touches (a planned canary ramp) is not suggested."""
    found = []
    for runbook in runbooks.values():
        lines = tuple(_evidence(figures, snapshot, c, touched) for c in runbook.evidence)
        suggestion = Suggestion(
            runbook=runbook.id,
            title=runbook.title,
            held=sum(1 for line in lines if line.holds),
            of=len(lines),
            linked=event.runbook == runbook.id,
            answers_alert=figure_of_rule is not None and figure_of_rule in runbook.alerts,
            evidence=lines,
            params=_prefilled(runbook, event, touched),
        )
        if suggestion.held or suggestion.linked or suggestion.answers_alert:
            found.append(suggestion)
    found.sort(key=lambda s: (-s.share, -s.held, not s.linked, not s.answers_alert, s.runbook))
    return found


def _evidence(
    figures: FigureReader,
    snapshot: FleetSnapshot,
    condition: Condition,
    touched: Mapping[str, list[str]],
) -> EvidenceLine:
    kind, name = condition.subject_kind, condition.figure
    above = condition.above is not None
    limit = condition.above if above else condition.below
    assert limit is not None  # evidence has above or below (console/runbook.py)
    bound = f"{'above' if above else 'below'} {figure_text(name, Figure(limit))}"
    window = condition.window_s if isinstance(condition.window_s, float) else figures.hub.window_s
    read = [
        (subject, figures.figure_at(snapshot, kind, subject, name, window))
        for subject in touched.get(kind + "s", [])
    ]
    known = [(s, f) for s, f in read if f.value is not None]
    if not known:
        why = "no " + kind + " affected" if not read else "not known"
        return EvidenceLine(name, kind, None, bound, None, f"{name}: {why} ({bound})")

    def value(item: tuple[str, Figure]) -> float:
        return item[1].value or 0.0

    subject, figure = max(known, key=value) if above else min(known, key=value)
    assert figure.value is not None
    holds = figure.value > limit if above else figure.value < limit
    shown = f"{name} of {subject} {figure_text(name, figure)} ({bound})"
    return EvidenceLine(name, kind, subject, bound, holds, shown)


def _prefilled(
    runbook: Runbook, event: AlertEvent, touched: Mapping[str, list[str]]
) -> dict[str, str]:
    """The parameters that name what is wrong, set to the incident's target: the one whose
    default would pick the culprit (the worst node, the failing upstream) or, without a
    default, one of the target's kind. The target itself, or the one subject of that kind it
    affects (an endpoint alert's one upstream). The others (the gateway, the backup) are
    left to their own defaults."""
    values = {}
    for param in runbook.params:
        culprit = param.fact in CULPRIT_FACTS or (param.fact is None and param.default is None)
        if not culprit or any(p.type == param.type and p.name in values for p in runbook.params):
            continue
        if param.type == event.subject_kind:
            values[param.name] = event.subject
        elif len(names := touched.get(param.type + "s", [])) == 1:
            values[param.name] = names[0]
    return values


@dataclass(frozen=True)
class PendingAlert:
    """An alert event with what was read for it on the loop, waiting for its write."""

    event: AlertEvent
    affected: dict[str, list[str]] = field(default_factory=dict)
    suggestions: tuple[Suggestion, ...] = ()


@dataclass(frozen=True)
class IncidentChange:
    """What an alert did to the incident log, for the listeners (``watch`` prints it)."""

    kind: str  # incident.opened, incident.joined or alert.resolved
    incident_id: int
    message: str
    suggestions: tuple[Suggestion, ...] = ()


class IncidentDesk:
    """Opens and joins incidents from alert events (the TUI's hub and ``llmops watch``)."""

    def __init__(
        self,
        log: IncidentLog,
        config: Config,
        runbooks: Mapping[str, Runbook],
        figures: FigureReader,
    ) -> None:
        self.log = log
        self.config = config
        self.runbooks = dict(runbooks)
        self.figures = figures
        self._rule_figures = {}
        for rule in figures.hub.alerts.rules:
            self._rule_figures[rule.name] = None if rule.figure == STALE else rule.figure

    def prepare(self, event: AlertEvent, snapshot: FleetSnapshot) -> PendingAlert:
        if event.kind != "alert.firing":
            return PendingAlert(event)
        touched = affected(self.config, event.subject_kind, event.subject)
        figure = self._rule_figures.get(event.rule)
        suggestions = rank(self.runbooks, self.figures, snapshot, event, touched, figure)
        return PendingAlert(event, touched, tuple(suggestions))

    def record(self, pending: PendingAlert) -> IncidentChange | None:
        """The write: open or join on a firing, log the resolve; None when another console
        logged the same already."""
        event = pending.event
        key = alert_key(event)
        data: dict[str, Any] = {
            "rule": event.rule,
            "subject_kind": event.subject_kind,
            "subject": event.subject,
            "severity": event.severity,
            "labels": event.labels,
            "figure": event.figure,
            "value": event.value,
            "worst": event.worst,
            "worst_at": event.worst_at,
        }
        if event.kind == "alert.resolved":
            resolved = self.log.alert_resolved(key, event.message, data)
            if resolved is None:
                return None
            return IncidentChange("alert.resolved", resolved, event.message)
        suggestions = pending.suggestions
        data["affected"] = pending.affected
        data["suggestions"] = [asdict(s) | {"why": s.why} for s in suggestions[:SUGGESTED]]
        first = suggestions[0].runbook if suggestions else event.runbook
        opening = self.log.alert_fired(
            key,
            f"{event.rule} on {event.subject}",
            event.message,
            target=event.subject,
            severity=event.severity,
            affected=pending.affected,
            runbook=first,
            data=data,
        )
        if not opening.logged:
            return None
        if opening.opened:
            shown = f"; suggested runbook {first}" if first else ""
            message = f"incident {opening.incident_id} opened: {event.message}{shown}"
            return IncidentChange("incident.opened", opening.incident_id, message, suggestions)
        message = f"incident {opening.incident_id} joined: {event.message}"
        return IncidentChange("incident.joined", opening.incident_id, message)
