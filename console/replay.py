"""Replay: the overview's figures (endpoints, nodes, GPUs) at a past moment, from the store.

The GPU polls, engine scrapes and probe results stored for the minutes before the moment are
fed, oldest first, into a fresh :class:`FleetReadings` through the methods the collectors
fill it with live, and the snapshot is computed by :func:`console.aggregate.fleet_snapshot`:
the same code, so a replayed figure is the figure the screen showed then
(tests/test_replay.py checks one against a live hub). The sparklines are sampled on the way
as the hub samples them. Source status is rebuilt from when samples came: a source with
none for ``stale_after_polls`` intervals is stale, one with none at all is absent (DOWN);
a node never reads as zeros. The last failure of each source comes from the incident log.

Read-only: nothing here writes the store, polls anything or knows of Textual.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from console.aggregate import endpoint_row, fleet_snapshot
from console.collectors import HISTORY_LEN, HISTORY_STEP_S, FleetReadings
from console.config import Config
from console.gpu_history import GpuHistory, GpuSeries
from console.hub import PROBE_WINDOW_S, WINDOW_S
from console.models import FleetSnapshot, ProbeResult, SourceStatus
from console.store import EngineScrape, GpuPoll, Store

# A source silent through the whole replayed span shows its last samples from up to this long
# before, marked stale, as the live windows would still hold them; older than that: absent.
STALE_LOOKBACK_S = 3600.0
# Live, "model changed" compares with the first answer since the console started; a replay
# compares with the first answer in the hour before the moment.
FIRST_MODEL_SINCE_S = 3600.0
SOURCE_EVENTS = ("source.failed", "source.recovered")


@dataclass(frozen=True)
class SourceReplay:
    """What the store holds of one source (``gpus:NODE``, ``engine:NODE``, ``probe:NAME``)."""

    name: str
    samples: int  # in the window (at - window_s, at]
    last_at: float | None  # its latest sample at or before ``at``; None: none in the lookback

    @property
    def had_data(self) -> bool:
        return self.samples > 0


@dataclass(frozen=True)
class FleetReplay:
    """The fleet as it was at ``at``: a snapshot to show, marked as a replay by whoever
    shows it, and which sources had data in its window."""

    at: float
    window_s: float
    snapshot: FleetSnapshot
    sources: tuple[SourceReplay, ...]
    span: tuple[float, float] | None  # the first and last stored sample: the cursor's range
    # The rebuilt readings (GPU histories for the GPU screen's graphs at that moment).
    readings: FleetReadings = field(compare=False, repr=False)

    def source(self, name: str) -> SourceReplay | None:
        return next((s for s in self.sources if s.name == name), None)


@dataclass
class _Seen:
    """What the feed has passed so far, per source: the basis of its status."""

    last_ok: dict[str, float] = field(default_factory=dict)
    last_sample: dict[str, float] = field(default_factory=dict)  # a failed probe's too
    failed_since_ok: dict[str, list[ProbeResult]] = field(default_factory=dict)
    in_window: dict[str, int] = field(default_factory=dict)

    def sample(self, name: str, ts: float, ok: bool, since: float) -> None:
        self.last_sample[name] = ts
        if ok:
            self.last_ok[name] = ts
        if ts > since:
            self.in_window[name] = self.in_window.get(name, 0) + 1


def fleet_at(store: Store, config: Config, at: float, window_s: float = WINDOW_S) -> FleetReplay:
    """The overview's snapshot at ``at`` over ``window_s``, from the stored samples."""
    readings = FleetReadings(
        window_s=max(window_s, WINDOW_S), probe_window_s=max(window_s, PROBE_WINDOW_S)
    )
    # The engine windows at the first sparkline point reach back this far; the GPUs' figures
    # are their last poll, and their sparklines the polls before it.
    engines_from = at - readings.window_s - HISTORY_LEN * HISTORY_STEP_S
    gpus_from = at - max(window_s, (HISTORY_LEN + 1) * config.poll.gpus_s)
    engines = store.read_samples(engines_from, at, kinds=("engine",)).engines
    gpus = store.read_samples(gpus_from, at, kinds=("gpus",)).gpus
    gpus_before, engines_before = _silent_sources(
        store, config, at, {"gpus": gpus_from, "engine": engines_from}, gpus, engines, readings
    )
    probes = store.read_probes(at - max(FIRST_MODEL_SINCE_S, readings.probe_window_s), at)

    # Oldest first; at one instant the samples go before the sparkline point that sees them.
    feed: list[tuple[float, int, object]] = [
        *((p.ts, 0, p) for p in [*gpus_before, *gpus]),
        *((e.ts, 0, e) for e in [*engines_before, *engines]),
        *((p.started_at, 0, p) for p in probes),
        *((at - k * HISTORY_STEP_S, 1, None) for k in range(HISTORY_LEN - 1, -1, -1)),
    ]
    feed.sort(key=lambda item: (item[0], item[1]))
    seen = _Seen()
    since = at - window_s
    for ts, _, item in feed:
        if isinstance(item, GpuPoll):
            readings.add_gpus(item.node, item.gpus, ts, config.poll.gpus_s)
            seen.sample(f"gpus:{item.node}", ts, True, since)
        elif isinstance(item, EngineScrape):
            readings.engine_window(item.stats.node).add(ts, item.stats)
            seen.sample(f"engine:{item.stats.node}", ts, True, since)
        elif isinstance(item, ProbeResult):
            readings.add_probe(item)
            name = f"probe:{item.endpoint}"
            seen.sample(name, ts, item.ok, since)
            failed = seen.failed_since_ok.setdefault(name, [])
            if item.ok:
                failed.clear()
            else:
                failed.append(item)
        else:
            _sample_history(config, readings, _statuses(config, seen, ts), ts, window_s)

    statuses = _statuses(config, seen, at, _failures(store, at))
    snapshot = fleet_snapshot(config, readings, statuses, at, window_s)
    sources = tuple(
        SourceReplay(name, seen.in_window.get(name, 0), seen.last_sample.get(name))
        for name in statuses
    )
    return FleetReplay(at, window_s, snapshot, sources, store.sample_span(), readings)


def _silent_sources(
    store: Store,
    config: Config,
    at: float,
    since: dict[str, float],
    gpus: list[GpuPoll],
    engines: list[EngineScrape],
    readings: FleetReadings,
) -> tuple[list[GpuPoll], list[EngineScrape]]:
    """The last samples of the sources with none since they were read from (``since``, by
    kind): what a live hub's readings still held of them (a node's last polls, an engine's
    last window)."""
    present = {f"gpus:{p.node}" for p in gpus} | {f"engine:{e.stats.node}" for e in engines}
    wanted = [f"gpus:{n.name}" for n in config.nodes]
    wanted += [f"engine:{n.name}" for n in config.nodes if n.engine is not None]
    silent = [name for name in wanted if name not in present]
    if not silent:
        return [], []
    earlier = store.sample_times(at - STALE_LOOKBACK_S, max(since.values()))
    gpus_before: list[GpuPoll] = []
    engines_before: list[EngineScrape] = []
    for name in silent:
        kind, node = name.split(":", 1)
        last = earlier.get((kind, node))
        if last is None or last >= since[kind]:
            continue
        span = at - since[kind]  # as much of its past as of the others'
        found = store.read_samples(last - span, last, node=node, kinds=(kind,))
        gpus_before += found.gpus
        engines_before += found.engines
    return gpus_before, engines_before


def _source_intervals(config: Config) -> dict[str, float]:
    """Every polled source the hub builds from the config, in its order, with its interval."""
    intervals: dict[str, float] = {}
    for node in config.nodes:
        intervals[f"gpus:{node.name}"] = config.poll.gpus_s
        if node.engine is not None:
            intervals[f"engine:{node.name}"] = config.poll.engine_s
    for endpoint in config.endpoints:
        intervals[f"probe:{endpoint.name}"] = endpoint.probe.every_s
    return intervals


def _failures(store: Store, at: float) -> dict[str, tuple[float, str]]:
    """Per source failing at ``at`` by the incident log: when it started and why."""
    rows = store.query(
        "SELECT source, kind, message, max(ts) AS ts FROM events "
        f"WHERE kind IN ({','.join('?' * len(SOURCE_EVENTS))}) AND ts <= ? GROUP BY source",
        [*SOURCE_EVENTS, at],
    )
    return {r["source"]: (r["ts"], r["message"]) for r in rows if r["kind"] == "source.failed"}


def _statuses(
    config: Config,
    seen: _Seen,
    now: float,
    failures: dict[str, tuple[float, str]] | None = None,
) -> dict[str, SourceStatus]:
    """Each source's status at ``now`` from the samples fed so far (and, at the replayed
    moment, the incident log's failures): stale past ``stale_after_polls`` silent intervals,
    as the scheduler judges it live."""
    statuses = {}
    for name, interval_s in _source_intervals(config).items():
        last_ok = seen.last_ok.get(name)
        stale = last_ok is None or now - last_ok > config.poll.stale_after_polls * interval_s
        status = SourceStatus(name, interval_s, last_ok_at=last_ok, stale=stale)
        failed = seen.failed_since_ok.get(name)
        if failed:  # a probe's failures are its results: the count and the last reason
            last = failed[-1]
            status = SourceStatus(
                name,
                interval_s,
                last_ok_at=last_ok,
                last_error=last.error or "probe failed",
                last_error_at=last.started_at,
                consecutive_failures=len(failed),
                stale=stale,
            )
        elif failures and name in failures and (last_ok is None or failures[name][0] > last_ok):
            failed_at, message = failures[name]
            status = SourceStatus(
                name,
                interval_s,
                last_ok_at=last_ok,
                last_error=message,
                last_error_at=failed_at,
                consecutive_failures=1,  # at least: the log says when it began, not how often
                stale=stale,
            )
        statuses[name] = status
    return statuses


def _sample_history(
    config: Config,
    readings: FleetReadings,
    statuses: dict[str, SourceStatus],
    now: float,
    window_s: float,
) -> None:
    """A sparkline point per endpoint, as the hub's housekeeping takes it live."""
    for endpoint in config.endpoints:
        row = endpoint_row(config, endpoint, readings, statuses, now, window_s)
        # A stale row's figures are frozen: the trend shows only what was measured.
        frozen = row.engines and row.engines_stale == row.engines
        if row.p95_s is not None and not frozen:
            readings.add_history_point(endpoint.name, now, row.p95_s)


def gpu_series_at(
    store: Store, config: Config, node: str, index: int, metric: str, window_s: float, at: float
) -> GpuSeries:
    """One GPU's history of one metric over ``window_s`` up to ``at`` (the GPU screen's graphs
    in a replay: 1 m to 1 h), from the stored polls, through the live history's own code."""
    history = GpuHistory(config.poll.gpus_s)
    for poll in store.read_samples(at - window_s, at, node=node, kinds=("gpus",)).gpus:
        for reading in poll.gpus:
            if reading.index == index:
                history.add(poll.ts, reading)
    return history.series(metric, window_s, at)


# -- the time cursor


def event_times(store: Store, incident_id: int) -> list[float]:
    """When something happened in an incident (it opened, each event of it and of its
    runbook runs), oldest first, each once: where the cursor jumps to. KeyError: no such
    incident."""
    opened = store.query("SELECT opened_at FROM incidents WHERE id = ?", [incident_id])
    if not opened:
        raise KeyError(incident_id)
    rows = store.query(
        "SELECT ts FROM events WHERE incident_id = ? "
        "OR run_id IN (SELECT id FROM runbook_runs WHERE incident_id = ?)",
        [incident_id, incident_id],
    )
    return sorted({opened[0]["opened_at"], *(r["ts"] for r in rows)})


def next_time(times: Sequence[float], at: float) -> float | None:
    """The first of ``times`` (sorted) after ``at``; None past the last."""
    i = bisect.bisect_right(times, at)
    return times[i] if i < len(times) else None


def previous_time(times: Sequence[float], at: float) -> float | None:
    """The last of ``times`` (sorted) before ``at``; None before the first."""
    i = bisect.bisect_left(times, at)
    return times[i - 1] if i > 0 else None


def sample_span(store: Store) -> tuple[float, float] | None:
    """The first and last stored sample's time: how far back and forth the cursor goes."""
    return store.sample_span()
