"""The step engine: runs one runbook's steps against the fleet, logging each before it acts.

A run goes step by step. Each step's ``step.started`` event is committed before its action,
and its result (command or diff, exit status, duration, redacted and truncated output) after
it, so the incident log never claims less than what happened. Mutating steps are planned
(the dry-run rendering), confirmed through the :class:`Controller`, and executed by the action
registry, which alone enforces read-only mode and confirmation. A failed step triggers the
compensations of the completed mutating steps in reverse order (``on_failure: rollback``);
a compensation that fails leaves the run ``needs attention``. A run interrupted by a crash
is resumed or rolled back from what the log holds (once its rollback had begun, only rolled
back); undoing changes another process made is confirmed like any mutating step.

It knows nothing of terminals: the CLI and the TUI drive it through a Controller and listen
to its :class:`RunUpdate` stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from console.actions import (
    ActionRefused,
    AlreadyDone,
    BackupMissing,
    Confirmation,
    Outcome,
    Plan,
    Registry,
)
from console.facts import Figure, FigureReader, figure_text
from console.incidents import IncidentLog, RunRecord
from console.redact import redact
from console.runbook import (
    ActionCall,
    Condition,
    Runbook,
    Step,
    duration_text,
    render_shell,
    render_text,
    render_value,
)

OUTPUT_LOG_BYTES = 16 * 1024  # of a step's output kept in the log (the rest is counted)
OUTPUT_LINES_SHOWN = 200  # of a step's output kept for the screen
FAILURE_LINES_SHOWN = 20  # of a failed action's output shown when it streamed none
DEFAULT_STEP_TIMEOUT_S = 600.0
WAIT_LOG_EVERY_S = 30.0  # a wait step logs its progress this often
# A figure that covers less than this share of its window is not known yet: right after the
# console starts, "ITL P95 over 30s" would otherwise be the last 4 seconds. Scrapes come every
# poll interval, so a window covered up to two intervals short of its length counts as covered.
COVERAGE_NEEDED = 0.5
COVERAGE_ENOUGH_S = 30.0  # ...or this much of it, whatever the window (a 1-hour one too)


class RunAborted(Exception):
    """The engineer aborted the run."""


@dataclass(frozen=True)
class ConfirmRequest:
    """What the engineer must decide: the question, the exact plan and the evidence."""

    step: Step
    question: str
    plan: Plan | None  # None for a confirm step (a decision, not an action)
    evidence: tuple[str, ...]  # one line per figure, already formatted
    protected: bool  # the target's name must be typed
    target: str | None


@dataclass(frozen=True)
class Decision:
    confirmed: bool
    operator: str
    typed_target: str | None = None
    how: str = ""  # e.g. "--yes", "typed gpu-a1", "dialog"


@dataclass(frozen=True)
class RunUpdate:
    """Something the screen or the terminal should show, as it happens."""

    # step.started, step.finished, plan (a line of the exact plan), output, progress,
    # decision, rollback, run.finished
    kind: str
    step: str | None
    text: str


class Controller(Protocol):
    """Who decides: the CLI's flags or prompt, or the TUI's runner screen."""

    async def confirm(self, request: ConfirmRequest) -> Decision: ...

    async def before_step(self, run: Run, step: StepState) -> str:
        """``run``, ``skip`` or ``abort`` before a step starts."""
        ...

    async def after_failure(self, run: Run, step: StepState, default: str) -> str:
        """``rollback``, ``continue``, ``stop``, ``retry`` or ``abort`` after a step fails."""
        ...


@dataclass
class StepState:
    step: Step
    index: int
    status: str = "pending"  # pending running ok failed skipped declined blocked planned
    summary: str = ""
    plan: Plan | None = None
    outcome: Outcome | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES_SHOWN))
    progress: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    # Arguments its first plan chose from the world (Plan.chosen): every later attempt, and
    # a resume, plans with them as given, so a retry acts on what the first attempt meant to.
    chosen: dict[str, object] = field(default_factory=dict)
    # An earlier attempt changed the world (wrote the file) without finishing well: later
    # attempts are planned to finish, or they would refuse a change that is "already there".
    changed: bool = False


@dataclass(frozen=True)
class _Done:
    """A completed mutating step: what undoes it."""

    step: str
    action: str
    args: Mapping[str, object]
    # The undo planned before a step that was interrupted: the change may not have been made.
    interrupted: bool = False
    # Made and confirmed by this process, undoing it too; a change read back from the log
    # (another process made it) is undone only when the one taking the run over confirms.
    confirmed_here: bool = False
    # Its undo began in a process that died: the file may be put back while the restart or
    # reload never ran, so a file that matches already is not "nothing to undo". Also set when
    # a later step of the run put the file back without verifying the engine serves it.
    undo_begun: bool = False


def _limit_text(name: str, limit: float) -> str:
    return figure_text(name, Figure(limit))


def truncate(text: str, limit: int = OUTPUT_LOG_BYTES) -> tuple[str, int]:
    """The text cut to ``limit`` bytes (keeping its end, where errors are), and its size."""
    data = text.encode()
    if len(data) <= limit:
        return text, len(data)
    kept = data[-limit:].decode(errors="ignore")
    return f"[{len(data) - limit} bytes cut; {len(data)} in all]\n{kept}", len(data)


class Run:
    """One run of one runbook with its parameter values (already typed and validated)."""

    def __init__(
        self,
        runbook: Runbook,
        values: Mapping[str, object],
        *,
        registry: Registry,
        figures: FigureReader,
        log: IncidentLog,
        controller: Controller,
        operator: str,
        record: RunRecord,
        mode: str = "live",
        secrets: Sequence[str] = (),
        listener: Callable[[RunUpdate], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runbook = runbook
        self.values = dict(values)
        self.registry = registry
        self.figures = figures
        self.log = log
        self.controller = controller
        self.operator = operator
        self.record = record
        self.mode = mode  # live, dry-run or read-only
        self.secrets = tuple(secrets)
        self.listener = listener
        self.sleep = sleep
        self.clock = clock
        self.steps = [StepState(step, i) for i, step in enumerate(runbook.steps)]
        self.done: list[_Done] = []  # completed mutating steps, oldest first
        self.outcome: str | None = None
        self.summary = ""
        self.failed_checks = 0
        self.blocked = 0
        # When the fleet last changed under this run: figures never reach back before it,
        # or a gate would pass on what the traffic did before the change.
        self.changed_at: float | None = None
        # Set by abort(): a running wait stops at its next read, a running action finishes.
        self.abort_requested = False
        self.rollback_requested = False  # abort(rollback=True): undo the changes made so far
        # On resume, the mutating step the run died in: its change may have landed.
        self._interrupted_step: str | None = None
        # Whether an undo began in this process: a rollback declined after that leaves the run
        # "interrupted during rollback" (it cannot be resumed), at the step still to undo.
        self._undo_began_here = False
        self._not_undone: list[_Done] = []  # after roll_back(): what it left, oldest first
        self._declined: _Done | None = None  # ...and the undo it stopped at, declined
        self._started = clock()

    # -- the run

    async def execute(self, start_at: int = 0) -> str:
        """Run the steps from ``start_at``; returns the outcome (also logged)."""
        try:
            for state in self.steps[start_at:]:
                move = self._stop_move() or await self.controller.before_step(self, state)
                if move == "rollback":
                    await self._roll_back_and_finish("aborted", f"rolled back by {self.operator}")
                    return self.outcome or "aborted"
                if move == "abort":
                    raise RunAborted
                if move == "skip":
                    await self._skip(state, f"skipped by {self.operator}")
                    continue
                if not await self._run_step(state):
                    return self.outcome or "failed"
        except RunAborted:
            if self.rollback_requested:
                await self._roll_back_and_finish("aborted", f"rolled back by {self.operator}")
            else:
                await self._finish("aborted", f"aborted by {self.operator}", rollback=False)
            return self.outcome or "aborted"
        if self.mode == "dry-run":
            failing = f"; {self.failed_checks} check(s) would fail" if self.failed_checks else ""
            await self._finish("dry-run", f"dry-run: nothing was changed{failing}")
        elif self.mode == "read-only":
            failed = f"; {self.failed_checks} step(s) failed" if self.failed_checks else ""
            await self._finish(
                "read-only",
                f"read-only: checks ran, {self.blocked} mutating step(s) not run{failed}",
            )
        else:
            await self._finish("verified", "finished and verified")
        return self.outcome or "verified"

    async def _run_step(self, state: StepState) -> bool:
        """Run one step (with its retries); False when the run ends here."""
        step = state.step
        if step.when is not None and not await self._when_holds(step):
            await self._skip(state, "condition not met: " + self._when_text(step))
            return True
        attempts = max(1, step.retry_attempts)
        attempt = 1
        while True:
            ok = await self._attempt(state, attempt, attempts)
            if ok is None:  # declined
                return await self._failed(state, declined=True)
            if ok:
                return True
            if attempt < attempts:
                attempt += 1
                self._emit(
                    "progress", step.id, f"retry {attempt}/{attempts} in {step.retry_delay_s:g}s"
                )
                await self._pause(step.retry_delay_s)
                continue
            choice = await self.controller.after_failure(self, state, step.on_failure)
            if choice == "retry":
                attempt = 1
                continue
            if choice == "abort":
                raise RunAborted
            if choice == "continue":
                return True
            return await self._failed(state, declined=False, rollback=choice == "rollback")

    async def _attempt(self, state: StepState, attempt: int, attempts: int) -> bool | None:
        kind = state.step.kind
        if kind == "mutate":
            return await self._mutate(state, attempt)
        if kind == "check":
            return await self._check(state)
        if kind == "wait":
            return await self._wait(state)
        if kind == "confirm":
            return await self._confirm_step(state)
        return await self._note(state)

    async def _pause(self, seconds: float) -> None:
        """Sleep between tries, in steps of at most a second: an abort ends it."""
        deadline = self.clock() + seconds
        while not self.abort_requested and (left := deadline - self.clock()) > 0:
            await self.sleep(min(1.0, left))
        if self.abort_requested:
            raise RunAborted

    def abort(self, *, rollback: bool = False) -> None:
        """Stop the run (and with ``rollback``, undo what it changed): a wait stops at its next
        read of the figures, an action that is running finishes first (cutting it off could
        leave half a change)."""
        self.abort_requested = True
        self.rollback_requested = self.rollback_requested or rollback

    def _stop_move(self) -> str | None:
        if self.rollback_requested:
            return "rollback"
        return "abort" if self.abort_requested else None

    async def skip_reason(self, state: StepState) -> str | None:
        """Why the step would be skipped if it started now (its ``when`` does not hold)."""
        step = state.step
        if step.when is None or await self._when_holds(step):
            return None
        return "condition not met: " + self._when_text(step)

    async def preview(self, state: StepState) -> Plan | None:
        """The plan a mutate step would run now (its dry-run view, redacted as the log is, so
        for showing only); logs and changes nothing. Raises ActionRefused as planning does."""
        call = state.step.action
        if state.step.kind != "mutate" or call is None:
            return None
        finish = state.step.id == self._interrupted_step or state.changed
        plan = await self.registry.plan(call.action, self._call_args(state), finish=finish)
        return replace(plan, summary=self._mask(plan.summary), detail=self._mask(plan.detail))

    async def _roll_back_and_finish(self, outcome: str, why: str) -> None:
        if self.mode == "dry-run":  # the undo of changes a run interrupted had made, shown
            await self.roll_back()
            await self._finish(
                "dry-run",
                f"dry-run: {why}; would roll back {len(self.done)} change(s); nothing was changed",
            )
            return
        if not self.done:
            # A change a later step put back (a forward restore_args) leaves nothing to undo,
            # but the run did change the fleet on the way.
            ran = any(
                s.step.kind == "mutate" and (s.outcome is not None or s.status == "ok")
                for s in self.steps
            )
            said = "nothing left to undo" if ran else "nothing had been changed"
            await self._finish(outcome, f"{why}; {said}", rollback=False)
            return
        result = await self.roll_back()
        if result == "ok":
            await self._finish(outcome, f"{why}; rolled back {len(self.done)} change(s)")
        elif result == "declined":
            await self._declined_undo(why)
        else:
            await self._finish("needs attention", f"{why}; a rollback step failed")

    async def resume(self, progress: Progress) -> str:
        """Go on from the step that was interrupted, after re-running the checks before it
        that still gate a change not made yet."""
        self.done = list(progress.done)
        if progress.interrupted_undo is not None:
            # The run died inside a mutating step, whose change may have landed: it is undone
            # with the others should the run fail or be rolled back.
            self.done.append(progress.interrupted_undo)
        # The step, planned again to finish, restarts or reloads on a file that landed rather
        # than refusing to make the change twice (or taking a file nothing runs yet for done).
        # Set from the step itself, not from its undo: a finish cut off in its turn logs no
        # undo of its own (the first attempt's stands), and is finished again all the same.
        self._interrupted_step = progress.interrupted_step
        for state in self.steps:
            state.chosen = dict(progress.chosen.get(state.step.id, {}))
        for state in self.steps[: progress.start_at]:
            state.status = progress.statuses.get(state.step.id, "ok")
        self._emit("progress", None, f"resuming at step {progress.start_at + 1}")
        landed = self._landed_before(progress)
        for state in self.steps[: progress.start_at]:
            if state.step.kind != "check":
                continue
            # A check before a change that has landed is not judged again. It said "the
            # problem is there" (ITL above 75 ms) and the change made it false: judged now it
            # would fail and roll back the very fix that worked. What verifies the change is
            # the steps after it. A check that failed, or precedes no change yet, still gates
            # what comes next: the fleet may have healed while no console ran.
            later = next((i for i in landed if i > state.index), None)
            if later is not None and progress.statuses.get(state.step.id) == "ok":
                await self._passed_before(state, self.steps[later].step.id)
                continue
            if not await self._run_step(state):
                return self.outcome or "failed"
        return await self.execute(progress.start_at)

    def _landed_before(self, progress: Progress) -> list[int]:
        """The indexes, in order, of the mutating steps up to the resume point whose change
        has (or may have) landed: those that ran, those with an undo pending, the one the run
        died in. A note changes nothing a check judges."""
        undone = {d.step for d in self.done}
        landed = []
        for state in self.steps[: progress.start_at + 1]:
            step = state.step
            if step.kind != "mutate" or (step.action and step.action.action == "incident.note"):
                continue
            ran = state.index < progress.start_at and progress.statuses.get(step.id) == "ok"
            if ran or step.id in undone or step.id == self._interrupted_step:
                landed.append(state.index)
        return landed

    async def _passed_before(self, state: StepState, changed_by: str) -> None:
        await self._start(state, state.step.title or "check")
        text = (
            "passed before the interruption (not re-checked: "
            f"{changed_by} has changed what it judged since)"
        )
        await self._end(state, "ok", text, {"rechecked": False})

    async def roll_back_interrupted(self, progress: Progress) -> str:
        """Undo what the interrupted run changed: its completed steps, and the step it died in."""
        self.done = list(progress.done)
        if progress.interrupted_undo is not None:
            self.done.append(progress.interrupted_undo)
        await self._roll_back_and_finish("failed", "interrupted")
        return self.outcome or "failed"

    # -- step kinds

    async def _mutate(self, state: StepState, attempt: int) -> bool | None:
        step = state.step
        assert step.action is not None
        # The attempt the run died in, or an earlier attempt here, may have written the file:
        # its undo is in self.done, and a plan to finish it (restart or reload, then verify)
        # makes what it began run.
        finish = step.id == self._interrupted_step or state.changed
        try:
            plan = await self.registry.plan(
                step.action.action, self._call_args(state), finish=finish
            )
        except ActionRefused as refusal:
            await self._start(state, f"{step.action.action}: planning")
            if self.mode == "read-only":
                # Shown as a check's failure is: a read-only run changes nothing, so what
                # would be refused is news for the engineer, not a failed run.
                self.failed_checks += 1
                await self._end(state, "failed", f"would be refused: {refusal}", {})
                return True
            await self._end(state, "failed", f"refused before anything changed: {refusal}", {})
            return False
        state.plan = plan
        if plan.chosen and not state.chosen:
            state.chosen = dict(plan.chosen)
        detail = self._mask(plan.detail)
        data: dict[str, Any] = {
            "action": plan.action,
            "detail": detail,
            "notes": list(plan.notes),
        }
        if state.chosen:
            data["chosen"] = dict(state.chosen)  # what a resume plans with (recorded_progress)
        if self.mode in ("dry-run", "read-only"):
            # Not even an action the registry lets through unconfirmed runs: a GET may change
            # things behind an admin API, and an incident.note would tell the timeline of a
            # change (traffic moved) that was never made.
            # A note's text stays out of the timeline's "started" line too, as a note step's.
            note = plan.action == "incident.note"
            await self._start(state, "incident.note" if note else plan.summary, data)
            for line in detail.splitlines():
                self._emit("plan", step.id, line)
            if note:
                text = f"not noted ({self.mode}), would note: {plan.detail}"
                await self._end(state, "planned", text, data)
            elif self.mode == "dry-run":
                await self._end(state, "planned", f"dry-run, not run: {plan.summary}", data)
            else:
                await self._blocked(state, plan)
            return True
        # Should this process die during the action, this is how the change is undone.
        planned = self.registry.compensation(plan, None)
        if planned is not None:
            data["undo_if_interrupted"] = {"action": planned[0], "args": dict(planned[1])}
        await self._start(state, plan.summary, {**data, "attempt": attempt})
        # Shown exactly before it is confirmed: the command, the diff or the request.
        for line in detail.splitlines():
            self._emit("plan", step.id, line)
        confirmation = None
        if plan.mutating:
            question = (
                render_text(step.confirm, self.values) if step.confirm else f"Run {plan.summary}?"
            )
            decision = await self._decide(state, question, plan, ())
            if not decision.confirmed:
                await self._end(state, "declined", f"declined by {decision.operator}", data)
                return None
            confirmation = Confirmation(
                decision.operator, Registry.digest(plan), decision.typed_target
            )
        started = self.clock()
        try:
            outcome = await asyncio.wait_for(
                self.registry.execute(
                    plan,
                    confirmation,
                    on_output=lambda line: self._output(state, line),
                    timeout_s=step.timeout_s,
                ),
                # The registry times its own commands out; this guards against one that hangs.
                (step.timeout_s or DEFAULT_STEP_TIMEOUT_S) + 30,
            )
        except ActionRefused as refusal:
            if self.mode == "read-only":
                await self._blocked(state, plan)
                return True
            await self._end(state, "failed", f"refused: {refusal}", data)
            return False
        except TimeoutError:
            outcome = Outcome(ok=False, summary=f"{plan.action} did not finish in time")
        state.outcome = outcome
        self.changed_at = self.figures.hub.clock()
        if not outcome.ok:
            # Show the end of what the action reported (a journal) that was not streamed.
            streamed = set(state.output)
            for line in outcome.output.splitlines()[-FAILURE_LINES_SHOWN:]:
                if line and self._mask(line) not in streamed:
                    self._output(state, line)
        result = self._result_data(plan, outcome, self.clock() - started)
        if outcome.undo is not None or "backup" in outcome.facts:
            state.changed = True  # the file is written: a retry finishes, not writes again
        if (outcome.ok or outcome.undo is not None) and not plan.finishes:
            # A failed step that changed something is undone with the others (a plan that
            # finishes an interrupted change: the undo of that change is in self.done).
            undo = self._undo_of(step, plan, outcome)
            if undo is not None:
                self.done.append(undo)
                result["undo"] = {"action": undo.action, "args": dict(undo.args)}
        put_back = self._puts_back(plan, outcome)
        if put_back:
            result["puts_back"] = put_back
        status = "ok" if outcome.ok else "failed"
        await self._end(state, status, outcome.summary, result)
        return outcome.ok

    def _puts_back(self, plan: Plan, outcome: Outcome) -> list[dict[str, Any]]:
        """A forward engine.restore_args that put back the backup an earlier change of this run
        kept undoes that change: verified, it is no longer one to undo (nor "left in place");
        written but not verified, its undo has begun (a rollback restarts on the file put back
        rather than finding "nothing to undo"). Returns what it put back, for the log: a
        resume reads it (recorded_progress)."""
        wrote = "backup" in outcome.facts or plan.finishes
        if plan.action != "engine.restore_args" or not wrote:
            return []
        node, backup = plan.args.get("node"), plan.args.get("backup")
        put_back = [
            d
            for d in self.done
            if d.action == "engine.restore_args"
            and d.args.get("node") == node
            and d.args.get("backup") == backup
        ]
        if outcome.ok:
            self.done = [d for d in self.done if d not in put_back]
        else:
            self.done = [replace(d, undo_begun=True) if d in put_back else d for d in self.done]
        return [{"step": d.step, "args": dict(d.args)} for d in put_back]

    async def _blocked(self, state: StepState, plan: Plan) -> None:
        self.blocked += 1
        await self._end(
            state,
            "blocked",
            f"read-only mode: {plan.summary} not run",
            {"action": plan.action, "detail": self._mask(plan.detail)},
        )

    async def _check(self, state: StepState) -> bool:
        step = state.step
        await self._start(state, step.title or "check")
        if self.mode == "live":  # a dry run decides nothing: its figures say their span
            await self._gather(state, step.expect)  # shown figures say what span they cover
        lines: list[str] = []
        for condition in step.show:
            lines.append(self._shown(condition, step.window_s))
        failed = 0
        for condition in step.expect:
            holds, text = self._evaluate(condition, step.window_s)
            lines.append(("ok   " if holds else "FAIL ") + text)
            failed += holds is not True
        output = ""
        exit_status = None
        detail = ""
        if step.command is not None:
            node = render_text(step.command.node, self.values)
            command = render_shell(step.command.run, self.values)
            try:
                plan = await self.registry.plan("node.inspect", {"node": node, "command": command})
                detail = plan.detail
                outcome = await self.registry.execute(
                    plan,
                    None,
                    on_output=lambda line: self._output(state, line),
                    timeout_s=step.timeout_s,
                )
                output, exit_status = outcome.output, outcome.exit_status
                if not outcome.ok:
                    failed += 1
                    lines.append(f"FAIL {outcome.summary}")
            except ActionRefused as refusal:
                failed += 1
                lines.append(f"FAIL refused: {refusal}")
        for line in lines:
            self._emit("output", step.id, line)
        text = "; ".join(lines) if lines else "ok"
        data = {"figures": lines, "detail": detail, "exit_status": exit_status}
        if output:
            data.update(self._output_data(output))
        if failed and self.mode in ("dry-run", "read-only"):
            self.failed_checks += 1
            await self._end(state, "failed", text, data)
            return True  # shown, and the dry run goes on to show the rest
        await self._end(state, "failed" if failed else "ok", text, data)
        return not failed

    async def _wait(self, state: StepState) -> bool:
        step = state.step
        timeout = step.timeout_s or DEFAULT_STEP_TIMEOUT_S
        await self._start(state, f"wait up to {timeout:g}s: " + self._conditions_text(step.until))
        deadline = self.clock() + timeout
        logged_at = self.clock()
        hold = self._duration(step.hold_s)
        held_since: float | None = None
        while True:
            if self.abort_requested:
                why = "rolled back" if self.rollback_requested else "aborted"
                await self._end(state, "failed", f"{why} by {self.operator} while waiting", {})
                raise RunAborted
            results = [self._evaluate(c, step.window_s) for c in step.until]
            text = "; ".join(t for _, t in results)
            left = deadline - self.clock()
            if all(holds is True for holds, _ in results):
                held_since = self.clock() if held_since is None else held_since
                if self.clock() - held_since >= hold:
                    held = f" for {hold:g}s" if hold else ""
                    await self._end(state, "ok", f"holds{held}: {text}", {"figures": [text]})
                    return True
                text += f"; held {self.clock() - held_since:.0f}s of {hold:g}s"
            else:
                held_since = None
            if self.mode in ("dry-run", "read-only"):
                await self._end(state, "planned", f"not waited ({self.mode}): now {text}", {})
                return True
            if left <= 0:
                await self._end(state, "failed", f"timed out after {timeout:g}s: {text}", {})
                return False
            state.progress = f"{text}; {left:.0f}s left"
            self._emit("progress", step.id, state.progress)
            if self.clock() - logged_at >= WAIT_LOG_EVERY_S:
                logged_at = self.clock()
                self.log.log(self.record, "step.progress", state.progress, step=step.id)
            await self.sleep(min(step.every_s, max(left, 0.01)))

    async def _confirm_step(self, state: StepState) -> bool | None:
        step = state.step
        question = render_text(step.question or "Go on?", self.values)
        evidence = tuple(self._shown(c, step.window_s) for c in step.evidence)
        await self._start(state, question, {"evidence": list(evidence)})
        if self.mode in ("dry-run", "read-only"):
            await self._end(state, "planned", f"not asked ({self.mode}): {question}", {})
            return True
        decision = await self._decide(state, question, None, evidence)
        if not decision.confirmed:
            await self._end(state, "declined", f"declined by {decision.operator}", {})
            return None
        await self._end(state, "ok", f"confirmed by {decision.operator}", {})
        return True

    async def _note(self, state: StepState) -> bool:
        text = render_text(state.step.text or "", self.values)
        await self._start(state, "note")
        if self.mode != "live":
            # A note says what was done ("traffic moved to the backup"): nothing was.
            await self._end(state, "planned", f"not noted ({self.mode}), would note: {text}", {})
            return True
        self.log.log(self.record, "note", text, step=state.step.id, operator_name=self.operator)
        await self._end(state, "ok", text, {})
        return True

    async def _skip(self, state: StepState, why: str) -> None:
        await self._start(state, state.step.title or state.step.kind)
        await self._end(state, "skipped", why, {})

    # -- decisions and failure

    async def _decide(
        self, state: StepState, question: str, plan: Plan | None, evidence: tuple[str, ...]
    ) -> Decision:
        config = self.registry.config
        request = ConfirmRequest(
            step=state.step,
            question=question,
            plan=plan,
            evidence=evidence,
            protected=config.protected and plan is not None,
            target=plan.target if plan is not None else None,
        )
        decision = await self.controller.confirm(request)
        verdict = "confirmed" if decision.confirmed else "declined"
        how = f" ({decision.how})" if decision.how else ""
        self.log.log(
            self.record,
            "step.decision",
            f"{verdict} by {decision.operator}{how}: {question}",
            step=state.step.id,
            data={"confirmed": decision.confirmed, "typed_target": decision.typed_target},
            operator_name=decision.operator,
        )
        self._emit("decision", state.step.id, f"{verdict} by {decision.operator}{how}")
        return decision

    async def _failed(self, state: StepState, *, declined: bool, rollback: bool = True) -> bool:
        if declined:
            rollback = state.step.on_failure == "rollback"
        outcome = "declined" if declined else "failed"
        what = f"{state.step.id} {'declined' if declined else 'failed'}"
        if rollback and self.done:
            await self._roll_back_and_finish(outcome, what)
            return False
        await self._finish(outcome, f"{what}{self._kept_text()}", rollback=False)
        return False

    def _kept_text(self) -> str:
        """``; 2 change(s) left in place: shrink, move`` (what a rollback would still undo)."""
        if not self.done:
            return ""
        names = ", ".join(
            d.step + (" (its file put back, the engine not verified on it)" if d.undo_begun else "")
            for d in self.done
        )
        return f"; {len(self.done)} change(s) left in place: {names}"

    async def roll_back(self) -> str:
        """Undo the completed mutating steps, newest first: ``ok``, ``failed`` (one of them
        failed) or ``declined``. A declined undo stops the rollback there: undoing older
        changes beneath a newer one that stays would make a state nobody planned."""
        result = "ok"
        self._not_undone = []
        for i in range(len(self.done) - 1, -1, -1):
            undone = await self._compensate(self.done[i])
            if undone == "declined":
                # This one and every older one stay, with those whose undo failed.
                self._not_undone = [*self.done[: i + 1], *reversed(self._not_undone)]
                self._declined = self.done[i]
                return undone
            if undone == "failed":
                self._not_undone.append(self.done[i])
                result = undone
        return result

    async def _declined_undo(self, why: str) -> None:
        """A take-over's rollback stopped at an undo the engineer declined: the run is let go
        (interrupted) naming each change not undone, oldest first."""
        not_undone, pending = self._not_undone, self._declined
        if pending is not None and (self._undo_began_here or self.record.rollback_step):
            # The run is past resuming (some undo began): it reads "interrupted during
            # rollback at STEP" from its last rollback.started, which must name the step whose
            # undo is still to do, not the one undone last. Marked pending: nothing of it began
            # (recorded_progress does not take it for an undo cut off).
            self.log.log(
                self.record,
                "rollback.started",
                f"rollback stopped at {pending.step}: its undo ({pending.action}) was declined",
                step=pending.step,
                data={"action": pending.action, "args": dict(pending.args), "pending": True},
            )
        names = ", ".join(f"{d.step} ({d.action})" for d in not_undone)
        declined = f"the undo of {pending.step} was declined" if pending else "an undo was declined"
        await self._release(f"{why}; {declined}; not undone: {names or 'none'}")

    async def _compensate(self, done: _Done) -> str:
        """Undo one change: ``ok`` (undone, or nothing to undo), ``failed`` or ``declined``.
        A dry run plans the undo and shows it exactly, as it shows any mutating step. An undo
        a crash cut off is planned to finish: a file put back still gets its restart or reload.
        """
        dry = self.mode == "dry-run"
        if dry:
            self._emit("rollback", done.step, f"would undo {done.step}: {done.action}")
        started = self.clock()
        plan: Plan | None = None
        declined = False
        begun = False
        try:
            plan = await self.registry.plan(done.action, done.args, finish=done.undo_begun)
            confirmation = None if dry else await self._undo_confirmation(done, plan)
            if dry:
                self._show_plan(done.step, plan)
                outcome = Outcome(ok=True, summary=f"dry-run, not run: {plan.summary}")
            elif confirmation is None:
                declined = True
                outcome = Outcome(ok=False, summary=f"declined: {plan.summary} not run")
            else:
                self._undo_begins(done)
                begun = True
                outcome = await self.registry.execute(
                    plan, confirmation, on_output=lambda line: self._emit("output", done.step, line)
                )
        except ActionRefused as refusal:
            if not dry and not begun:
                # Logged all the same: a rollback.finished is read against the undo before it.
                self._undo_begins(done)
            plan = None
            if isinstance(refusal, AlreadyDone):  # the state is the old one already
                outcome = Outcome(ok=True, summary=f"nothing to undo: {refusal}")
            elif done.interrupted and isinstance(refusal, BackupMissing):
                # The step writes its backup before the file: died before that, it changed
                # nothing.
                why = f"the step died before it changed anything ({refusal})"
                outcome = Outcome(ok=True, summary=f"nothing to undo: {why}")
            else:
                outcome = Outcome(ok=False, summary=f"refused: {refusal}")
        data: dict[str, Any] = {"action": done.action}
        if plan is not None and (dry or declined):
            data["detail"] = self._mask(plan.detail)
        elif plan is not None:
            data = self._result_data(plan, outcome, self.clock() - started)
        if dry:
            status = "would roll back" if outcome.ok else "ROLLBACK WOULD FAIL"
        elif declined:
            status = "NOT UNDONE"
        else:
            status = "rolled back" if outcome.ok else "ROLLBACK FAILED"
        self.log.log(
            self.record,
            "rollback.planned" if dry else "rollback.finished",
            f"{status}: {outcome.summary}",
            step=done.step,
            data={**data, "ok": outcome.ok},
        )
        self._emit("rollback", done.step, f"{status}: {outcome.summary}")
        if not dry:
            for state in self.steps:
                if state.step.id == done.step:
                    state.status = "rolled back" if outcome.ok else "undo failed"
        if declined:
            return "declined"
        return "ok" if outcome.ok else "failed"

    def _undo_begins(self, done: _Done) -> None:
        """Log that an undo begins. Only once it is confirmed: the run reads ``interrupted
        during rollback`` from this event, and a take-over declined before anything changed
        leaves the run as it was (resumable)."""
        self._undo_began_here = True
        self.log.log(
            self.record,
            "rollback.started",
            f"undoing {done.step}: {done.action}",
            step=done.step,
            data={"action": done.action, "args": dict(done.args)},
        )
        self._emit("rollback", done.step, f"undoing {done.step}: {done.action}")

    async def _undo_confirmation(self, done: _Done, plan: Plan) -> Confirmation | None:
        """What lets an undo run; None when the engineer declined it."""
        digest = Registry.digest(plan)
        if done.confirmed_here:
            # Undoing what this run did was confirmed with the change itself.
            return Confirmation(self.operator, digest, plan.target)
        # A change another process made (this one took the run over): confirmed like any
        # mutating step, on its exact plan (the target typed in a protected environment).
        self._emit("rollback", done.step, f"to undo {done.step}: {done.action}")
        self._show_plan(done.step, plan)
        state = next((s for s in self.steps if s.step.id == done.step), None)
        if state is None:  # the runbook changed since the run: the step is gone from it
            state = StepState(Step(done.step, "mutate", 0), -1)
        decision = await self._decide(state, f"Undo {done.step}: {plan.summary}?", plan, ())
        if not decision.confirmed:
            return None
        return Confirmation(decision.operator, digest, decision.typed_target)

    def _show_plan(self, step: str, plan: Plan) -> None:
        for line in self._mask(plan.detail).splitlines():
            self._emit("plan", step, line)

    async def _release(self, summary: str) -> None:
        """End without an outcome: the run reads interrupted again, for a rollback confirmed
        later to finish (the log says which changes are still to undo)."""
        self.outcome = "declined"
        self.summary = f"{summary} ({self.clock() - self._started:.1f}s)"
        self.log.release(self.record, f"run {self.record.id} left interrupted: {summary}")
        self._emit(
            "run.finished",
            None,
            f"declined: {self.summary}; run {self.record.id} stays interrupted, "
            "`llmops runbook rollback` finishes the undo",
        )

    async def _finish(self, outcome: str, summary: str, rollback: bool = True) -> None:
        self.outcome = outcome
        took = self.clock() - self._started
        self.summary = f"{summary} ({took:.1f}s)"
        self.log.finish_run(
            self.record,
            outcome,
            f"run {self.record.id} {outcome}: {summary}",
            {"duration_s": round(took, 3), "changes": [d.step for d in self.done]},
        )
        self._emit("run.finished", None, f"{outcome}: {self.summary}")

    # -- helpers

    def _call_args(self, state: StepState) -> dict[str, Any]:
        """A mutate step's arguments, with those its first plan chose (Plan.chosen)."""
        assert state.step.action is not None
        return {**self._args(state.step.action), **state.chosen}

    def _args(self, call: ActionCall) -> dict[str, Any]:
        from console.action_specs import ACTION_SPECS

        spec = ACTION_SPECS[call.action]
        args: dict[str, Any] = {}
        for key, value in call.args.items():
            shell = spec.args[key].kind == "shell" if key in spec.args else False
            args[key] = render_value(value, self.values, shell=shell)
            if isinstance(value, Mapping) and len(args[key]) < len(value):
                # {"{{ failing }}": 0, "{{ backup }}": 100} with failing == backup
                raise ActionRefused(f"{key}: two entries name the same thing: {args[key]}")
        return args

    def _undo_of(self, step: Step, plan: Plan, outcome: Outcome) -> _Done | None:
        if step.rollback is not None and not step.rollback.inherit:
            return _Done(
                step.id, step.rollback.action, self._args(step.rollback), confirmed_here=True
            )
        compensation = self.registry.compensation(plan, outcome)
        if compensation is None:
            return None
        action, args = compensation
        if step.rollback is not None:  # a bare name: that action, fed the step's undo
            action = step.rollback.action
        return _Done(step.id, action, args, confirmed_here=True)

    def _result_data(self, plan: Plan, outcome: Outcome, took_s: float) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": plan.action,
            "detail": self._mask(plan.detail),
            "exit_status": outcome.exit_status,
            "duration_s": round(took_s, 3),
            "ok": outcome.ok,
            "facts": {k: _plain(v) for k, v in outcome.facts.items()},
        }
        data.update(self._output_data(outcome.output))
        return data

    def _output_data(self, output: str) -> dict[str, Any]:
        # Cut before redacting (redaction of long unbroken text is slow), then again: a
        # masked secret is shorter than the secret.
        cut, size = truncate(output, 2 * OUTPUT_LOG_BYTES)
        text, _ = truncate(self._mask(cut))
        return {"output": text, "output_bytes": size}

    def _mask(self, text: str) -> str:
        return redact(text, known=self.secrets)

    def _output(self, state: StepState, line: str) -> None:
        line = self._mask(line)
        state.output.append(line)
        self._emit("output", state.step.id, line)

    def _duration(self, value: float | str | None) -> float:
        """A step's duration as written, or read from its ``{{ param }}``; 0 when unset."""
        if isinstance(value, str):
            rendered = render_value(value, self.values)
            assert isinstance(rendered, int | float)  # the linter checked its type
            return float(rendered)
        return value or 0.0

    def _window(self, *windows: float | str | None) -> float:
        """The first window given (``{{ soak }}`` reads the duration parameter's value), or
        the console's; cut at the last change this run made."""
        chosen = next(
            (self._duration(w) for w in windows if w is not None), self.figures.hub.window_s
        )
        if self.changed_at is not None:
            chosen = min(chosen, max(self.figures.hub.clock() - self.changed_at, 0.001))
        return chosen

    def _read(
        self, condition: Condition, window_s: float | str | None
    ) -> tuple[str, float, Figure]:
        """A condition's subject, the window it is read over, and its figure now."""
        subject = render_text(condition.subject, self.values)
        window = self._window(condition.window_s, window_s)
        figure = self.figures.figure(condition.subject_kind, subject, condition.figure, window)
        return subject, window, figure

    def _shown(self, condition: Condition, window_s: float | str | None) -> str:
        subject, window, figure = self._read(condition, window_s)
        shown = figure_text(condition.figure, figure) + self._span_text(figure, window)
        return f"{condition.figure} of {subject}: {shown}"

    def _evaluate(
        self, condition: Condition, window_s: float | str | None
    ) -> tuple[bool | None, str]:
        """Whether a condition holds now (None: not known yet), and the figures behind it."""
        subject, window, figure = self._read(condition, window_s)
        name = condition.figure
        shown = f"{name} of {subject} {figure_text(name, figure)}{self._span_text(figure, window)}"
        value = figure.value
        if condition.min_requests and (figure.n is None or figure.n < condition.min_requests):
            return None, f"{shown}: fewer than {condition.min_requests} requests yet"
        if value is None:
            return None, f"{shown}: not known"
        if self._uncovered_s(figure, window) > 0:
            return None, f"{shown}: not known until {self._needed_s(window):.0f}s are seen"
        if condition.above is not None:
            return (
                value > condition.above,
                f"{shown} (needs > {_limit_text(name, condition.above)})",
            )
        if condition.below is not None:
            return (
                value < condition.below,
                f"{shown} (needs < {_limit_text(name, condition.below)})",
            )
        relative = condition.at_most
        assert relative is not None
        other_subject = render_text(relative.subject, self.values)
        other = self.figures.figure(relative.subject_kind, other_subject, name, window)
        if other.value is None:
            return None, f"{shown}; {name} of {other_subject} not known"
        limit = relative.times * other.value + relative.plus
        return value <= limit, (
            f"{shown} (needs <= {_limit_text(name, limit)}: {relative.times:g}x "
            f"{other_subject}'s {figure_text(name, other)}"
            + (f" + {relative.plus:g}" if relative.plus else "")
            + ")"
        )

    def _needed_s(self, window: float) -> float:
        slack = 2 * self.registry.config.poll.engine_s
        return max(0.0, min(COVERAGE_NEEDED * window, window - slack, COVERAGE_ENOUGH_S))

    def _uncovered_s(self, figure: Figure, window: float) -> float:
        """How much longer the figure needs to cover enough of its window (0: enough)."""
        # Lifetime figures and gauges have no window to cover; probes are samples, which
        # min_requests counts (one probe per interval covers nothing in between), unless too
        # few have been sent yet to make a rate.
        if figure.wait_s is not None:
            return figure.wait_s
        if figure.window_s is None or not figure.note.startswith("engine"):
            return 0.0
        return max(0.0, self._needed_s(window) - figure.window_s)

    @staticmethod
    def _span_text(figure: Figure, window: float) -> str:
        """`` over 12s of 30s`` where the figure covers visibly less than it was asked for."""
        covered = figure.window_s
        if covered is None or covered >= 0.9 * window:
            return ""
        # A window cut at a change is a float of no interest to the tenth: 5.01905 -> 5s.
        return f" over {covered:.0f}s of {duration_text(round(window, 1))}"

    async def _gather(self, state: StepState, conditions: Sequence[Condition]) -> None:
        """Before a check judges: wait (with progress) until its figures cover enough of
        their windows, or as long as that can take: a console just started has seen only
        seconds of traffic."""
        deadline: float | None = None
        while True:
            if self.abort_requested:
                why = "rolled back" if self.rollback_requested else "aborted"
                text = f"{why} by {self.operator} while gathering figures"
                await self._end(state, "failed", text, {})
                raise RunAborted
            missing = 0.0
            for condition in conditions:
                _, window, figure = self._read(condition, state.step.window_s)
                missing = max(missing, self._uncovered_s(figure, window))
            if missing <= 0:
                return
            now = self.clock()
            if deadline is None:
                slack = 2 * self.registry.config.poll.engine_s
                deadline = now + missing + slack
            if now >= deadline:
                return  # judged on what there is: the figures say what they cover
            state.progress = f"gathering figures: {missing:.0f}s more of the window to see"
            self._emit("progress", state.step.id, state.progress)
            await self.sleep(min(1.0, max(deadline - now, 0.01)))

    def _conditions_text(self, conditions: Sequence[Condition]) -> str:
        parts = []
        for c in conditions:
            subject = render_text(c.subject, self.values)
            if c.above is not None:
                parts.append(f"{c.figure} of {subject} > {_limit_text(c.figure, c.above)}")
            elif c.below is not None:
                parts.append(f"{c.figure} of {subject} < {_limit_text(c.figure, c.below)}")
            else:
                parts.append(f"{c.figure} of {subject} within bounds")
        return " and ".join(parts)

    async def _when_holds(self, step: Step) -> bool:
        when = step.when
        if isinstance(when, Condition):
            holds, _ = self._evaluate(when, step.window_s)
            return holds is True
        assert when is not None
        value = self.values.get(when.param)
        if when.equals is not None:
            return value == when.equals
        if when.in_:
            return value in when.in_
        return value != when.not_

    def _when_text(self, step: Step) -> str:
        when = step.when
        if isinstance(when, Condition):
            return self._conditions_text([when])
        assert when is not None
        if when.equals is not None:
            return f"{when.param} = {when.equals}"
        if when.in_:
            return f"{when.param} in {list(when.in_)}"
        return f"{when.param} != {when.not_}"

    async def _start(self, state: StepState, text: str, data: dict[str, Any] | None = None) -> None:
        state.status, state.started_at, state.summary = "running", time.time(), text
        step = state.step
        self.log.log(
            self.record,
            "step.started",
            f"step {step.id} ({step.kind}) started: {text}",
            step=step.id,
            data={"kind": step.kind, **(data or {})},
            operator_name=self.operator,
        )
        self._emit("step.started", step.id, text)

    async def _end(self, state: StepState, status: str, text: str, data: dict[str, Any]) -> None:
        state.status, state.finished_at, state.summary = status, time.time(), text
        state.progress = ""
        kind = "step.planned" if status == "planned" else "step.finished"
        self.log.log(
            self.record,
            kind,
            f"step {state.step.id} {status}: {text}",
            step=state.step.id,
            data={"status": status, **data},
            operator_name=self.operator,
        )
        self._emit("step.finished", state.step.id, f"{status}: {text}")

    def _emit(self, kind: str, step: str | None, text: str) -> None:
        if self.listener is not None:
            self.listener(RunUpdate(kind, step, self._mask(text)))


@dataclass(frozen=True)
class Progress:
    """How far a run got, read back from its events."""

    start_at: int  # the step to go on with
    done: tuple[_Done, ...]  # completed changes not undone yet, oldest first
    interrupted_undo: _Done | None  # what undoes the step the run died in, if it had begun
    statuses: dict[str, str]  # step id -> status recorded
    # The mutating step to go on with when it had begun (the run died in it, or it failed
    # after changing something): planned to finish, it restarts on a file that landed.
    interrupted_step: str | None = None
    chosen: dict[str, dict[str, object]] = field(default_factory=dict)  # step -> Plan.chosen


def recorded_progress(log: IncidentLog, record: RunRecord, runbook: Runbook) -> Progress:
    done: list[_Done] = []
    statuses: dict[str, str] = {}
    # The undo of a mutating step that started and has not finished (yet, or ever).
    pending: dict[str, _Done] = {}
    undoing: tuple[str, object] | None = None  # the step and args of the last undo begun
    chosen: dict[str, dict[str, object]] = {}
    for event in log.events(run_id=record.id):
        kind, step, data = event["kind"], event["step"], event["data"]
        if kind == "step.started":
            pending.pop(step, None)
            if undo := data.get("undo_if_interrupted"):
                pending[step] = _Done(step, undo["action"], undo["args"], interrupted=True)
            if data.get("chosen"):
                chosen.setdefault(step, data["chosen"])  # the first plan's choice holds
        elif kind in ("step.finished", "step.planned"):
            pending.pop(step, None)
            statuses[step] = data.get("status", "ok")
            if undo := data.get("undo"):
                done.append(_Done(step, undo["action"], undo["args"]))
            for put in data.get("puts_back") or ():
                # A later step put that change's backup back (Run._puts_back).
                key = (put["step"], dict(put["args"]))
                hit = [i for i, d in enumerate(done) if (d.step, dict(d.args)) == key]
                for i in hit:
                    done[i] = replace(done[i], undo_begun=True)
                if data.get("ok"):
                    done = [d for i, d in enumerate(done) if i not in hit]
        elif kind in ("run.resumed", "run.rolled back"):
            # Taken over after a crash cut a step off: the change it was making may have
            # landed, and that attempt will never record its undo; the run's does.
            done.extend(pending.values())
            pending.clear()
        elif kind == "rollback.started":
            # One marked pending names where a declined rollback stopped: nothing of it ran.
            undoing = None if data.get("pending") else (step, data.get("args"))
        elif kind == "rollback.finished" and data.get("ok") and undoing is not None:
            # This one change is undone; a step's other attempt may not be.
            matches = [i for i, d in enumerate(done) if (d.step, dict(d.args)) == undoing]
            if matches:
                del done[matches[-1]]
            undoing = None
    if undoing is not None:
        # The last undo begun did not finish well (a crash cut it off, or its restart or
        # reload failed): its file may be put back with nothing running it yet.
        matches = [i for i, d in enumerate(done) if (d.step, dict(d.args)) == undoing]
        if matches:
            done[matches[-1]] = replace(done[matches[-1]], undo_begun=True)
    ids = [s.id for s in runbook.steps]
    open_step = record.open_step
    interrupted_undo = None
    if open_step is not None and open_step in ids:
        start_at = ids.index(open_step)
        interrupted_undo = pending.get(open_step)
    else:
        last = max((ids.index(s) for s in statuses if s in ids), default=-1)
        # A run that died after a step failed (before its rollback began) tries that step
        # again: going on after it would skip what failed.
        failed = last >= 0 and statuses[ids[last]] in ("failed", "declined")
        start_at = last if failed else last + 1
    interrupted_step = None
    if start_at < len(ids) and runbook.steps[start_at].kind == "mutate":
        at = ids[start_at]
        # It began: the run died in it (its finish too, which logs no undo of its own), or
        # an attempt of it failed after changing something (its undo is recorded).
        if at == open_step or any(d.step == at for d in done):
            interrupted_step = at
    return Progress(start_at, tuple(done), interrupted_undo, statuses, interrupted_step, chosen)


def _plain(value: object) -> object:
    """A value JSON can hold (facts may be tuples or mappings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)
