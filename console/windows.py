"""Rolling windows of engine scrapes, and the request figures the endpoints show from them.

A window keeps one engine's scrapes for ``max_age_s`` and is pruned by age alone: after an
outage the scrapes from before it leave the window instead of staying its base, and every
figure says how much time it really covers. Increases are taken per series (each counter,
each bucket of each data-parallel rank) between consecutive scrapes with counter-reset
detection, then summed, then merged across nodes: what PromQL's
``histogram_quantile(q, sum by (le) (rate(x_bucket[1m])))`` does, so one rank restarting never
yields a histogram of negative deltas. Pure: the caller passes the timestamps. Knows nothing
of how scrapes are fetched, nor of the UI.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from console.models import EngineStats, Histogram, SeriesLabels
from console.stats import counter_delta, merge_histograms, observations

E2E = "vllm:e2e_request_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
SUCCESS = "vllm:request_success_total"
ERROR_REASONS = frozenset({"error", "abort"})

_T = TypeVar("_T")
_ANSWERS = 4096  # figures a window remembers before it forgets them all

# One counter series inside a family: its labels, and for a histogram which of its counters
# (a bucket's bound, "sum" or "count"; None for a plain counter).
_Key = tuple[SeriesLabels, float | str | None]


@dataclass(frozen=True)
class _Scrape:
    ts: float
    stats: EngineStats
    # Reset-corrected running totals per family and series: the increase over any run of
    # consecutive scrapes is the difference of two of them, so a query costs one subtraction
    # per series instead of a walk over every scrape.
    totals: dict[str, dict[_Key, float]]


def _series(stats: EngineStats) -> Iterator[tuple[str, _Key, float]]:
    for family, counters in stats.counters.items():
        for labels, value in counters.items():
            yield family, (labels, None), value
    for family, hists in stats.histograms.items():
        for labels, hist in hists.items():
            for le, count in hist.buckets:
                yield family, (labels, le), count
            yield family, (labels, "sum"), hist.sum
            yield family, (labels, "count"), hist.count


class EngineWindow:
    """The scrapes of one engine (node) over the last ``max_age_s`` seconds."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._scrapes: deque[_Scrape] = deque()
        # (family, key) -> (last raw value, its running total, when it was seen).
        self._last: dict[tuple[str, _Key], tuple[float, float, float]] = {}
        # Figures already computed, by the scrapes they stand on (the first and last in
        # range): the screens, each alert rule and each runbook condition ask for the same
        # ones many times a second, and until a scrape enters or leaves the range they are
        # the same. Which scrapes a range holds, by (now, range), until the next scrape.
        self._answers: dict[tuple[object, ...], object] = {}
        self._ranges: dict[tuple[float, float], list[_Scrape]] = {}

    def add(self, ts: float, stats: EngineStats) -> None:
        """Append a scrape taken at ``ts`` and drop those older than ``max_age_s`` before it."""
        self._ranges.clear()
        if len(self._answers) > _ANSWERS:  # those of scrapes long gone are never asked again
            self._answers.clear()
        if self._scrapes and ts < self._scrapes[-1].ts:
            # The clock went back: the history cannot be ordered against the new scrape.
            self._scrapes.clear()
            self._last.clear()
            self._answers.clear()
        elif self._scrapes and ts == self._scrapes[-1].ts:
            # Two scrapes at one instant (a coarse or frozen clock): the newer one stands.
            # The running totals stay chained through the one replaced.
            self._scrapes.pop()
            self._answers.clear()  # figures that stood on the one replaced
        totals: dict[str, dict[_Key, float]] = {}
        for family, key, value in _series(stats):
            last = self._last.get((family, key))
            # A series first seen here starts its total at 0: only differences are used.
            total = 0.0 if last is None else last[1] + counter_delta(value, last[0])
            totals.setdefault(family, {})[key] = total
            self._last[(family, key)] = (value, total, ts)
        self._scrapes.append(_Scrape(ts, stats, totals))
        while self._scrapes[0].ts < ts - self.max_age_s:
            self._scrapes.popleft()
        oldest = self._scrapes[0].ts
        if any(seen < oldest for _, _, seen in self._last.values()):
            # Series gone for longer than the window (a rank removed, a model renamed).
            self._last = {k: v for k, v in self._last.items() if v[2] >= oldest}

    @property
    def node(self) -> str | None:
        return self._scrapes[-1].stats.node if self._scrapes else None

    def latest(self) -> EngineStats | None:
        return self._scrapes[-1].stats if self._scrapes else None

    @property
    def last_ts(self) -> float | None:
        """When the latest scrape was taken."""
        return self._scrapes[-1].ts if self._scrapes else None

    def _in_range(self, now: float, range_s: float) -> list[_Scrape]:
        found = self._ranges.get((now, range_s))
        if found is None:
            # Left-open like a PromQL range selector: (now - range_s, now].
            found = [s for s in self._scrapes if now - range_s < s.ts <= now]
            self._ranges[(now, range_s)] = found
        return found

    def span_key(self, now: float, range_s: float) -> tuple[float, ...]:
        """What a figure over ``(now - range_s, now]`` stands on: its first and last scrape,
        and how many there are. Equal keys, equal figures."""
        scrapes = self._in_range(now, range_s)
        return (scrapes[0].ts, scrapes[-1].ts, len(scrapes), range_s) if scrapes else (range_s,)

    def remembered(
        self, what: tuple[object, ...], now: float, range_s: float, make: Callable[[], _T]
    ) -> _T:
        """``make()`` for the range, computed once for the scrapes it stands on."""
        key = (*what, *self.span_key(now, range_s))
        if key not in self._answers:
            self._answers[key] = make()
        return self._answers[key]  # type: ignore[return-value]

    def span(self, now: float, range_s: float) -> tuple[float, float] | None:
        """First and last scrape in ``(now - range_s, now]``; None with fewer than two."""
        scrapes = self._in_range(now, range_s)
        return (scrapes[0].ts, scrapes[-1].ts) if len(scrapes) > 1 else None

    @staticmethod
    def _increases(scrapes: list[_Scrape], family: str) -> dict[_Key, float] | None:
        """Per series of ``family``: increase between its first and last scrape in range."""
        first, last = scrapes[0].totals.get(family), scrapes[-1].totals.get(family)
        if first is None and last is None:
            return None
        increases: dict[_Key, float] = {}
        for key in {*(first or {}), *(last or {})}:
            if first is not None and last is not None and key in first and key in last:
                increases[key] = last[key] - first[key]
                continue
            # A series that starts or ends inside the range: its own first and last scrape.
            have = [s.totals[family][key] for s in scrapes if key in s.totals.get(family, {})]
            if len(have) > 1:
                increases[key] = have[-1] - have[0]
        return increases

    def rate(
        self,
        family: str,
        now: float,
        range_s: float,
        where: Callable[[SeriesLabels], bool] | None = None,
    ) -> float | None:
        """Per-second increase of a counter family over the scrapes in ``(now - range_s, now]``.

        The sum over its series (those ``where`` accepts) divided by the time the scrapes span,
        not by ``range_s``: a window only partly covered reads the rate of the part it covers.
        None with fewer than two scrapes in range, or when the family is not exposed.
        """

        def make() -> float | None:
            scrapes = self._in_range(now, range_s)
            if len(scrapes) < 2 or (increases := self._increases(scrapes, family)) is None:
                return None
            total = sum(v for (labels, _), v in increases.items() if where is None or where(labels))
            return total / (scrapes[-1].ts - scrapes[0].ts)

        return self.remembered(("rate", family, where), now, range_s, make)

    def histogram_increases(
        self, family: str, now: float, range_s: float
    ) -> dict[SeriesLabels, Histogram]:
        """Per series of a histogram family: the observations made in ``(now - range_s, now]``.
        The mapping is shared with later callers until the next scrape: read it, never change it."""
        return self.remembered(
            ("histograms", family),
            now,
            range_s,
            lambda: self._histogram_increases(family, now, range_s),
        )

    def _histogram_increases(
        self, family: str, now: float, range_s: float
    ) -> dict[SeriesLabels, Histogram]:
        scrapes = self._in_range(now, range_s)
        increases = self._increases(scrapes, family) if len(scrapes) > 1 else None
        parts: dict[SeriesLabels, tuple[list[tuple[float, float]], dict[str, float]]] = {}
        for (labels, part), value in (increases or {}).items():
            buckets, extra = parts.setdefault(labels, ([], {}))
            if isinstance(part, str):
                extra[part] = value
            elif part is not None:
                buckets.append((part, value))
        return {
            labels: Histogram(
                buckets=tuple(sorted(buckets)),
                sum=extra.get("sum", 0.0),
                count=extra.get("count", 0.0),
            )
            for labels, (buckets, extra) in parts.items()
            if buckets
        }


@dataclass(frozen=True)
class EngineFigures:
    """Request figures of the engines behind one endpoint."""

    covered_s: float | None  # the shortest span of scrapes used; None for lifetime figures
    requests: float  # observations behind the percentiles (the e2e +Inf bucket)
    e2e: Histogram | None
    ttft: Histogram | None
    itl: Histogram | None
    requests_per_s: float | None  # None until an engine has two scrapes in the window
    errors_per_s: float | None  # finished_reason error or abort
    mismatched: tuple[str, ...] = ()  # series left out: their bucket bounds differ


def _series_name(node: str | None, family: str, labels: SeriesLabels) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{node} {family}{{{inner}}}"


def _is_error(labels: SeriesLabels) -> bool:
    return dict(labels).get("finished_reason") in ERROR_REASONS


def _figures(
    histograms: dict[str, list[tuple[str, Histogram]]],
    covered_s: float | None,
    requests_per_s: float | None,
    errors_per_s: float | None,
) -> EngineFigures:
    merged = {family: merge_histograms(items) for family, items in histograms.items()}
    e2e = merged[E2E].histogram
    return EngineFigures(
        covered_s=covered_s,
        requests=observations(e2e) if e2e is not None else 0.0,
        e2e=e2e,
        ttft=merged[TTFT].histogram,
        itl=merged[ITL].histogram,
        requests_per_s=requests_per_s,
        errors_per_s=errors_per_s,
        mismatched=tuple(name for m in merged.values() for name in m.mismatched),
    )


def window_figures(
    windows: Iterable[EngineWindow], now: float, range_s: float
) -> EngineFigures | None:
    """Figures over ``(now - range_s, now]`` from the windows of the engines passed.

    Rates are per engine over its own span, then summed. None until some engine has two
    scrapes in range. One engine's figures are remembered by its window until its next
    scrape: the overview's node row, the alert rules and the runbook checks share them.
    """
    windows = list(windows)
    if len(windows) == 1:
        return windows[0].remembered(
            ("figures",), now, range_s, lambda: _window_figures(windows, now, range_s)
        )
    return _window_figures(windows, now, range_s)


def _window_figures(
    windows: list[EngineWindow], now: float, range_s: float
) -> EngineFigures | None:
    histograms: dict[str, list[tuple[str, Histogram]]] = {E2E: [], TTFT: [], ITL: []}
    spans: list[float] = []
    rates: list[float] = []
    errors: list[float] = []
    errors_known = True
    for window in windows:
        span = window.span(now, range_s)
        if span is None:
            continue
        spans.append(span[1] - span[0])
        for family, items in histograms.items():
            for labels, hist in window.histogram_increases(family, now, range_s).items():
                items.append((_series_name(window.node, family, labels), hist))
        if (rate := window.rate(SUCCESS, now, range_s)) is not None:
            rates.append(rate)
            if _reports_reasons(window.latest()):
                errors.append(window.rate(SUCCESS, now, range_s, where=_is_error) or 0.0)
            else:
                errors_known = False  # SGLang counts requests, not how they ended
    if not spans:
        return None
    return _figures(
        histograms,
        min(spans),
        sum(rates) if rates else None,
        sum(errors) if rates and errors_known else None,
    )


def _reports_reasons(stats: EngineStats | None) -> bool:
    """Whether an engine's request counter says how requests ended (``finished_reason``)."""
    return stats is not None and any(
        "finished_reason" in dict(labels) for labels in stats.counters.get(SUCCESS, {})
    )


def lifetime_figures(windows: Iterable[EngineWindow]) -> EngineFigures | None:
    """Figures since each engine started: the cumulative histograms of its latest scrape."""
    histograms: dict[str, list[tuple[str, Histogram]]] = {E2E: [], TTFT: [], ITL: []}
    seen = False
    for window in windows:
        stats = window.latest()
        if stats is None:
            continue
        seen = True
        for family, items in histograms.items():
            for labels, hist in stats.histograms.get(family, {}).items():
                items.append((_series_name(stats.node, family, labels), hist))
    return _figures(histograms, None, None, None) if seen else None
