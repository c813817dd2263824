"""Alert rules evaluated on the live windows: when a condition has held for its ``for``, the
rule fires for that subject; it resolves once the condition has not held for its resolve
delay. Firing and resolving are events for the incident log.

The rules are the config's ``alerts.rules`` plus one per threshold of ``alerts:`` (unless
``threshold_rules: false``), so that a config written before rules existed alerts on what
its thresholds already marked in reverse video:

==================  ===================================  ===========
threshold           rule                                 subject
==================  ===================================  ===========
``p95_latency``     ``e2e_p95`` above it, for 1 m        every endpoint
``ttft_p95``        ``ttft_p95`` above it, for 1 m       every endpoint
``error_rate_pct``  ``error_pct`` above it, for 1 m      every endpoint
``gpu_temp_c``      ``gpu_temp_max_c`` above it, 1 m     every node
``kv_cache_pct``    ``kv_cache_pct`` above it, for 1 m   every node
==================  ===================================  ===========

Hysteresis: a rule that fired stays firing until its condition has been false, on known
figures, for ``resolve_after`` (default: the greater of ``for`` and a minute); a figure that
is not known (the node went stale) neither fires nor resolves a rule, since missing data is
no recovery. So a figure flapping across its limit fires once, not once per crossing.

Figures are read off one snapshot per distinct window per evaluation (console/facts.py).
Nothing here talks to the world; the hub calls :meth:`AlertEngine.evaluate` once a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from console.config import EVERY, STALE, AlertRule, AlertThresholds, Config
from console.facts import Figure, FigureReader, figure_text
from console.models import FleetSnapshot

THRESHOLD_FOR_S = 60.0


def threshold_rules(thresholds: AlertThresholds) -> tuple[AlertRule, ...]:
    """The rules the thresholds stand for (see the module docstring)."""
    specs = (
        ("p95-latency", "e2e_p95", "endpoint", thresholds.p95_latency_s),
        ("ttft-p95", "ttft_p95", "endpoint", thresholds.ttft_p95_s),
        ("error-rate", "error_pct", "endpoint", thresholds.error_rate_pct),
        ("gpu-temperature", "gpu_temp_max_c", "node", thresholds.gpu_temp_c),
        ("kv-cache-full", "kv_cache_pct", "node", thresholds.kv_cache_pct),
    )
    return tuple(
        AlertRule.model_validate(
            {"name": f"threshold.{name}", "figure": figure, kind: EVERY, "above": limit}
            | {"for": THRESHOLD_FOR_S}
        )
        for name, figure, kind, limit in specs
    )


def rules_of(config: Config) -> tuple[AlertRule, ...]:
    builtin = threshold_rules(config.alerts) if config.alerts.threshold_rules else ()
    return (*builtin, *config.alerts.rules)


@dataclass
class AlertState:
    """One rule for one subject."""

    rule: AlertRule
    subject: str
    pending_since: float | None = None  # the condition has held since
    firing_since: float | None = None
    clear_since: float | None = None  # firing, and the condition has not held since
    value: float | None = None  # the figure at the last evaluation
    note: str = ""
    # While firing: the figure at its worst (the highest for an "above" rule), and when.
    worst: float | None = None
    worst_at: float | None = None

    @property
    def firing(self) -> bool:
        return self.firing_since is not None


@dataclass(frozen=True)
class AlertEvent:
    kind: str  # "alert.firing" or "alert.resolved"
    rule: str
    subject_kind: str
    subject: str
    severity: str
    at: float
    message: str
    runbook: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # The rule's figure now and, on a resolve, at its worst while firing (the postmortem's
    # impact); None for a stale rule and for an outside source's alert.
    figure: str | None = None
    value: float | None = None
    worst: float | None = None
    worst_at: float | None = None

    @property
    def source(self) -> str:
        return f"alert:{self.rule}:{self.subject}"


@dataclass(frozen=True)
class _Check:
    rule: AlertRule
    kind: str
    bound: tuple[str, float] | None
    states: tuple[AlertState, ...]


class AlertEngine:
    def __init__(
        self,
        config: Config,
        figures: FigureReader,
        clock: Callable[[], float],
        rules: Sequence[AlertRule] | None = None,
    ) -> None:
        self.config = config
        self.rules = tuple(rules_of(config) if rules is None else rules)
        self._figures = figures
        self._clock = clock
        self._states: dict[tuple[str, str], AlertState] = {}
        # Each rule read once: its subject kind, bound and states (evaluated every second).
        self._checks: list[_Check] = []
        for rule in self.rules:
            states = []
            for subject in self._subjects(rule):
                state = self._states.setdefault((rule.name, subject), AlertState(rule, subject))
                states.append(state)
            self._checks.append(_Check(rule, rule.subject_kind, rule.bound, tuple(states)))

    @property
    def states(self) -> list[AlertState]:
        return list(self._states.values())

    def firing(self) -> list[AlertState]:
        return [s for s in self._states.values() if s.firing]

    def _subjects(self, rule: AlertRule) -> list[str]:
        if rule.subject != EVERY:
            return [rule.subject]
        kind = rule.subject_kind
        if kind == "node":
            return [n.name for n in self.config.nodes]
        if kind == "endpoint":
            return [e.name for e in self.config.endpoints]
        return [u for r in self.config.routers for u in r.upstreams]

    def evaluate(self, snapshot: FleetSnapshot | None = None) -> list[AlertEvent]:
        """One pass over every rule and subject; the events of what fired or resolved.

        ``snapshot``: one the caller took over the hub's window just now (the housekeeping's,
        shared with the sparklines); rules over another window take their own.
        """
        now = self._clock()
        snapshots: dict[float, FleetSnapshot] = {}
        if snapshot is not None:
            snapshots[self._figures.hub.window_s] = snapshot
        events = []
        for check in self._checks:
            window = check.rule.window_s or self._figures.hub.window_s
            snapshot = snapshots.get(window)
            if snapshot is None:
                snapshot = snapshots[window] = self._figures.hub.snapshot(window)
            for state in check.states:
                holds, state.value, state.note = self._holds(check, state.subject, snapshot, window)
                event = _step(state, holds, now)
                if state.firing and state.value is not None:
                    _track_worst(state, check.bound, now)
                if event is not None:
                    events.append(self._event(state, event, now))
                if event == "alert.resolved":
                    state.worst = state.worst_at = None
        return events

    def _holds(
        self, check: _Check, subject: str, snapshot: FleetSnapshot, window: float
    ) -> tuple[bool | None, float | None, str]:
        """Whether the condition holds now (None: not known), the figure, and a note."""
        rule = check.rule
        if rule.figure == STALE:
            stale = _stale_sources(snapshot, check.kind, subject)
            return bool(stale), float(len(stale)), ", ".join(stale)
        figure: Figure = self._figures.figure_at(snapshot, check.kind, subject, rule.figure, window)
        bound = check.bound
        assert bound is not None  # the config refuses a figure rule without one
        if figure.value is None:
            return None, None, figure.note or "not known"
        side, limit = bound
        holds = figure.value > limit if side == "above" else figure.value < limit
        return holds, figure.value, figure.note

    def _event(self, state: AlertState, kind: str, now: float) -> AlertEvent:
        rule = state.rule
        what = f"{rule.figure} of {state.subject}"
        if rule.figure == STALE:
            shown = f"{state.subject}: sources stale: {state.note}" if state.note else ""
        else:
            side, limit = rule.bound or ("above", 0.0)
            value = figure_text(rule.figure, Figure(state.value))
            shown = f"{what} {value} ({side} {figure_text(rule.figure, Figure(limit))})"
        if kind == "alert.firing":
            message = f"{rule.name} firing: {shown or what} for {rule.for_s:g}s"
        else:
            message = f"{rule.name} resolved: {shown or what} clear for {rule.resolve_delay_s:g}s"
        return AlertEvent(
            kind=kind,
            rule=rule.name,
            subject_kind=rule.subject_kind,
            subject=state.subject,
            severity=rule.severity,
            at=now,
            message=message,
            runbook=rule.runbook,
            labels=dict(rule.labels),
            figure=None if rule.figure == STALE else rule.figure,
            value=state.value,
            worst=state.worst if kind == "alert.resolved" else None,
            worst_at=state.worst_at if kind == "alert.resolved" else None,
        )


def _track_worst(state: AlertState, bound: tuple[str, float] | None, now: float) -> None:
    value = state.value
    assert value is not None
    above = bound is None or bound[0] == "above"
    if state.worst is None or (value > state.worst if above else value < state.worst):
        state.worst, state.worst_at = value, now


def _step(state: AlertState, holds: bool | None, now: float) -> str | None:
    """Advance one rule-subject state; the event kind when it fires or resolves."""
    rule = state.rule
    if holds is None:  # not known: no evidence either way, and missing data is no recovery
        state.pending_since = state.clear_since = None
        return None
    if holds:
        state.clear_since = None
        if state.firing:
            return None
        if state.pending_since is None:
            state.pending_since = now
        if now - state.pending_since >= rule.for_s:
            state.firing_since, state.pending_since = now, None
            return "alert.firing"
        return None
    state.pending_since = None
    if not state.firing:
        return None
    if state.clear_since is None:
        state.clear_since = now
    if now - state.clear_since >= rule.resolve_delay_s:
        state.firing_since = state.clear_since = None
        return "alert.resolved"
    return None


def _stale_sources(snapshot: FleetSnapshot, kind: str, subject: str) -> list[str]:
    """The subject's sources that are stale now: a node's GPUs and engine, an endpoint's
    probe (an upstream: those of what its figures come from)."""
    names = {
        "node": (f"gpus:{subject}", f"engine:{subject}"),
        "endpoint": (f"probe:{subject}",),
    }.get(kind, ())
    return [s.name for s in snapshot.sources if s.name in names and s.stale]
