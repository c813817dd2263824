"""The scheduler: backoff with jitter, Retry-After, staleness on the monotonic clock, dead tasks."""

from __future__ import annotations

import asyncio

import pytest

from console.scheduler import Scheduler, Source


class Clocks:
    """A wall clock that jumps (NTP, a suspended laptop) and a monotonic one that does not."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 100.0


class Refused(Exception):
    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__("HTTP 429")
        self.retry_after_s = retry_after_s


def make(sources: list[Source], clocks: Clocks, jitter: float = 0.0) -> tuple[Scheduler, list]:
    events: list[tuple[str, str, str]] = []
    scheduler = Scheduler(
        sources,
        max_backoff_s=8.0,
        stale_after_polls=2,
        on_event=lambda *e: events.append(e),
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
        jitter=lambda: jitter,
    )
    return scheduler, events


async def fail(exc: Exception) -> None:
    raise exc


async def test_backoff_doubles_to_its_cap_and_jitter_only_shortens_it() -> None:
    source = Source("probe:x", 1.0, lambda: fail(Refused()))
    delays = {}
    for draw in (0.0, 1.0):
        scheduler, _ = make([source], Clocks(), jitter=draw)
        steps = []
        for _ in range(6):
            await scheduler.poll(source)
            steps.append(scheduler.delay_after(source))
        delays[draw] = steps
    assert delays[0.0] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # The most jitter takes a quarter off, so that nodes that failed together spread out,
    # but never below the interval a healthy source is polled at.
    assert delays[1.0] == [1.0, 1.5, 3.0, 6.0, 6.0, 6.0]


async def test_a_source_failing_all_weekend_keeps_its_capped_backoff() -> None:
    # 2 ** 1025 intervals used to raise OverflowError and kill the collector for good.
    source = Source("gpus:a", 2.0, lambda: fail(Refused()))
    scheduler, _ = make([source], Clocks())
    for failures in (1026, 10**6):
        scheduler.update("gpus:a", consecutive_failures=failures)
        assert scheduler.delay_after(source) == 8.0


async def test_a_max_backoff_below_the_interval_never_polls_faster() -> None:
    source = Source("probe:x", 10.0, lambda: fail(Refused()))
    scheduler, _ = make([source], Clocks(), jitter=1.0)  # max_backoff_s is 8 s
    for _ in range(3):
        await scheduler.poll(source)
        assert scheduler.delay_after(source) == 10.0


async def test_retry_after_is_the_least_wait_and_is_forgotten_after_success() -> None:
    outcome: list[Exception | None] = [Refused(retry_after_s=30.0)]

    async def poll() -> None:
        if outcome[0] is not None:
            raise outcome[0]

    source = Source("probe:x", 1.0, poll)
    scheduler, _ = make([source], Clocks(), jitter=1.0)
    await scheduler.poll(source)
    assert scheduler.delay_after(source) == 30.0  # not the 0.75 s of the first backoff step
    outcome[0] = None
    await scheduler.poll(source)
    assert scheduler.delay_after(source) == 1.0
    outcome[0] = Refused()  # a later refusal without Retry-After backs off as usual
    await scheduler.poll(source)
    assert scheduler.delay_after(source) == 1.0


async def test_staleness_follows_the_monotonic_clock_not_the_wall_clock() -> None:
    async def ok() -> None:
        return None

    clocks = Clocks()
    source = Source("gpus:a", 2.0, ok)
    scheduler, _ = make([source], clocks)
    await scheduler.poll(source)
    clocks.wall += 3600  # the wall clock jumps an hour (NTP step): nothing went stale
    assert scheduler.status("gpus:a").stale is False
    clocks.mono += 4.5  # two 2 s intervals and a bit really passed
    status = scheduler.status("gpus:a")
    assert status.stale is True
    assert status.last_ok_at == 1_700_000_000.0  # shown as the wall time of the last answer


async def test_failure_and_recovery_are_events_once_each() -> None:
    outcome: list[Exception | None] = [RuntimeError("gpu-a1: connection refused")]

    async def poll() -> None:
        if outcome[0] is not None:
            raise outcome[0]

    source = Source("gpus:a", 1.0, poll)
    scheduler, events = make([source], Clocks())
    await scheduler.poll(source)
    await scheduler.poll(source)
    outcome[0] = None
    await scheduler.poll(source)
    assert events == [
        ("source.failed", "gpus:a", "gpu-a1: connection refused"),
        ("source.recovered", "gpus:a", "gpus:a answers again"),
    ]


async def test_a_collector_task_that_dies_says_why_on_its_source() -> None:
    async def ok() -> None:
        return None

    source = Source("engine:a", 0.01, ok)
    scheduler, events = make([source], Clocks())

    def broken_delay(s: Source) -> float:
        raise ZeroDivisionError("interval bug")

    scheduler.delay_after = broken_delay  # type: ignore[method-assign]
    scheduler.start()
    await asyncio.sleep(0.05)
    status = scheduler.status("engine:a")
    await scheduler.stop()
    assert status.consecutive_failures == 1
    assert status.last_error == "collector stopped: interval bug"
    assert events[-1][0] == "source.failed"


@pytest.mark.parametrize("retry_after", [0.0, -5.0, "soon"])
async def test_a_meaningless_retry_after_is_ignored(retry_after: object) -> None:
    exc = Refused()
    exc.retry_after_s = retry_after  # type: ignore[assignment]
    source = Source("probe:x", 1.0, lambda: fail(exc))
    scheduler, _ = make([source], Clocks())
    await scheduler.poll(source)
    assert scheduler.delay_after(source) == 1.0


async def test_a_failure_that_was_an_answer_keeps_the_interval() -> None:
    """A provider answering 500s is polled at its interval: backing off would leave its
    error rate, made of those very probes, not known (one probe in a 15 s window)."""
    answered = Refused()
    answered.answered = True  # type: ignore[attr-defined]
    outcome: list[Exception] = [answered]

    async def poll() -> None:
        raise outcome[0]

    source = Source("probe:x", 1.0, poll)
    scheduler, _ = make([source], Clocks(), jitter=0.0)
    for _ in range(5):
        await scheduler.poll(source)
        assert scheduler.delay_after(source) == 1.0
    outcome[0] = Refused()  # no answer at all: backed off as before
    for _ in range(3):
        await scheduler.poll(source)
    assert scheduler.delay_after(source) > 1.0
