"""Runbooks: the YAML format and its linter, the records the step engine runs, parameter values
and the templates that insert them.

A runbook is read with the config's machinery (console/yamlconf.py): every problem is one line
``FILE:LINE: key.path: what is wrong (expected ...)``, and all of a file's problems come at once,
in line order. Private pydantic models mirror the file's keys and check each part on its own (a
step's keys against its kind, a condition's subject against its figure); what needs the whole
runbook (templates naming parameters, action arguments against console.action_specs, `of:`
references) is checked on the raw data by the top model, so it is reported with the field errors.
A valid file becomes a tree of frozen dataclasses (Runbook, Param, Step, ...): nothing here runs
a step.

Templates insert parameters only: ``{{ name }}``. Into a shell command each value goes through
:func:`shlex.quote`, so it reaches the command as exactly one word; the linter refuses the places
where a shell would not honour those quotes (inside quotes, backticks, comments and
here-documents, after a backslash or a ``$``), where bash evaluates the word (arithmetic,
``[[ ]]``, variable names), where its output is split again (``$( )``), and the words a program
parses again as code (``sh -c``, ``eval``, ``ssh``, ``su -c``, ``python -c``, a pipe into a
shell): see :func:`_shell_problems`.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from yaml.nodes import MappingNode, ScalarNode

from console.action_specs import ACTION_SPECS, ActionSpec
from console.actions import read_only_problem
from console.facts import FACTS, FACTS_OF
from console.figures import FIGURES
from console.redact import looks_secret, secret_key_name
from console.yamlconf import (
    DURATION,
    Check,
    Document,
    DocumentError,
    Duration,
    Loc,
    boolean,
    duration,
    entries,
    integer,
    key_problem,
    line_at,
    load_document,
    null_means,
    number,
    parse_duration,
    problem,
    raise_all,
    show,
    suggest,
    text,
    value_problem,
    where,
    written_key_problem,
)

PARAM_TYPES = frozenset(
    {"string", "int", "float", "enum", "bool", "duration", "node", "endpoint", "upstream"}
)
STEP_KINDS = ("check", "mutate", "wait", "confirm", "note")
ON_FAILURE = ("rollback", "continue", "stop")
SUBJECT_KINDS = ("node", "endpoint", "upstream")
# Changes only the incident log: a mutate step may use it although the registry calls it
# read-only (it runs in dry-run and read-only mode too).
NOTE_ACTION = "incident.note"
MAX_ATTEMPTS = 10
DEFAULT_EVERY_S = 5.0
DEFAULT_RETRY_DELAY_S = 5.0

# The keys each kind of step takes, besides id and kind.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "check": ("title", "show", "expect", "command", "timeout", "retry", "when", "on_failure"),
    "mutate": (
        "title",
        "action",
        "with",
        "confirm",
        "rollback",
        "on_failure",
        "timeout",
        "retry",
        "when",
    ),
    "wait": ("title", "until", "hold", "timeout", "every", "window", "when", "on_failure"),
    "confirm": ("title", "question", "evidence", "when"),
    "note": ("title", "text", "when"),
}
# What a kind cannot do without, said in the missing-key message.
_NEEDED: dict[str, dict[str, str]] = {
    "mutate": {"action": "an action name such as engine.set_args"},
    "wait": {
        "until": "a list of conditions that must all hold",
        "timeout": "a duration: how long the step waits",
    },
    "confirm": {"question": "the question the engineer answers"},
    "note": {"text": "the note's text"},
}
_ALL_STEP_KEYS = frozenset(k for keys in STEP_KEYS.values() for k in keys) | {"id", "kind"}
_ORDERED_TYPES = ("int", "float", "duration")  # the types min and max are for
_NAME = "a name of letters, digits, '.', '_' and '-'"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_PARAM_NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")
_TOKEN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # keys yamlconf writes into a key.path as they are
# Wider than a parameter name, so that {{ Node }} is "unknown parameter" with a suggestion.
_TEMPLATE_RE = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")
# Jinja statements and comments, refused by name. Only with their closing mark: a lone `{%` is
# printf's '{%s}' and a lone `{#` is the shell's ${#var}.
_STATEMENT_RE = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_TEMPLATES_ONLY = "expected {{ name }}: templates insert parameters only"
_TRUE_WORDS = frozenset({"true", "yes", "1"})
_FALSE_WORDS = frozenset({"false", "no", "0"})
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_Problems = list[tuple[Loc, object, PydanticCustomError]]


# --- the records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A parameter as declared: its type, its bounds, and where its default comes from."""

    name: str
    type: str
    description: str = ""
    # True when declared so, and when there is no default to fall back on.
    required: bool = False
    default: object | None = None  # typed: int, float, bool, str, or seconds for a duration
    fact: str | None = None  # the default is read from this fact (console.facts.FACTS) at run time
    fact_of: str | None = None  # the parameter a FACTS_OF fact is read for
    minimum: float | None = None  # int, float and duration (seconds)
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None  # a Python regular expression a string value fully matches
    line: int = 0

    @property
    def expected(self) -> str:
        """What a good value is, for a message or a prompt: ``an integer from 256 to 65536``."""
        kind = self.type
        if kind in _ORDERED_TYPES:
            what = {"int": "an integer", "float": "a number", "duration": "a duration"}[kind]
            low, high = (
                None if b is None else format_value(b, kind) for b in (self.minimum, self.maximum)
            )
            if low is not None and high is not None:
                return f"{what} from {low} to {high}"
            if low is not None:
                return f"{what} of at least {low}"
            if high is not None:
                return f"{what} of at most {high}"
            return f"{what} such as 30s or 5m" if kind == "duration" else what
        if kind == "bool":
            return "true or false"
        if kind == "enum":
            return "one of: " + ", ".join(self.choices)
        if kind == "string":
            return f"a string matching {self.pattern}" if self.pattern else "a non-empty string"
        return f"{_a(kind)} name"


@dataclass(frozen=True)
class Relative:
    """``at_most``: the figure is at most ``times`` × the other subject's same figure + ``plus``."""

    times: float
    plus: float
    subject_kind: str
    subject: str  # a name or a template


@dataclass(frozen=True)
class Condition:
    """A figure of one subject, compared (expect, until, when) or only shown (show, evidence)."""

    figure: str
    subject_kind: str  # node, endpoint or upstream
    subject: str  # a name or a template
    above: float | None = None  # seconds for latency figures
    below: float | None = None
    at_most: Relative | None = None
    # The figure counts only with this many requests behind it; fewer: not known yet.
    min_requests: int | None = None
    # None: the step's window, else the console's; a string: "{{ param }}" of a duration param
    window_s: float | str | None = None
    line: int = 0


@dataclass(frozen=True)
class ActionCall:
    """An action of the registry with its arguments as written (templates not yet rendered)."""

    action: str
    args: Mapping[str, object]
    line: int = 0
    # A rollback given without arguments: they are what the step reported it would take to
    # undo what it did (the action's compensation, fed with the execution's report).
    inherit: bool = False


@dataclass(frozen=True)
class WhenParam:
    """``when: {param: P, equals: v}``, ``{param: P, in: [a, b]}`` or ``{param: P, not: v}``:
    one of equals, in_ and not_ is set (None and () stand for unset: a value is never None),
    with values typed as the parameter's are."""

    param: str
    equals: object | None = None
    in_: tuple[object, ...] = ()
    not_: object | None = None
    line: int = 0


@dataclass(frozen=True)
class Command:
    """A check's read-only command: run on ``node`` through the action node.inspect."""

    node: str  # a name or a template
    run: str  # a shell command; parameters are inserted with render_shell
    line: int = 0


@dataclass(frozen=True)
class Step:
    id: str
    kind: str  # check, mutate, wait, confirm or note
    line: int
    title: str = ""
    action: ActionCall | None = None  # mutate
    # mutate: undoes the step when a later one fails; when not written, the action's own
    # compensation (ActionSpec.compensation) with the arguments the step reports.
    rollback: ActionCall | None = None
    confirm: str | None = None  # mutate: the question; None: built from the plan
    on_failure: str = "rollback"  # rollback, continue or stop
    timeout_s: float | None = None
    retry_attempts: int = 1  # tries in all
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S
    when: WhenParam | Condition | None = None  # the step runs only if it holds
    show: tuple[Condition, ...] = ()  # check: figures printed
    expect: tuple[Condition, ...] = ()  # check: all must hold
    until: tuple[Condition, ...] = ()  # wait: all must hold at once
    every_s: float = DEFAULT_EVERY_S  # wait: how often the figures are read again
    # wait: how long the conditions must hold without a break (a soak); a string:
    # "{{ param }}" of a duration param
    hold_s: float | str | None = None
    # The figures' window; None: the console's; a string: "{{ param }}" of a duration param
    window_s: float | str | None = None
    command: Command | None = None  # check
    question: str | None = None  # confirm
    evidence: tuple[Condition, ...] = ()  # confirm: figures shown with the question
    text: str | None = None  # note

    @property
    def mutating(self) -> bool:
        """Whether the step changes the world (not in dry-run, not in read-only mode)."""
        return (
            self.kind == "mutate"
            and self.action is not None
            and ACTION_SPECS[self.action.action].mutating
        )


@dataclass(frozen=True)
class Runbook:
    id: str
    title: str
    description: str
    alerts: tuple[str, ...]  # the alerts and figures it answers
    symptoms: tuple[str, ...]
    params: tuple[Param, ...]
    steps: tuple[Step, ...]
    path: Path
    line: int
    # What suggests it for an incident: conditions read on the incident's affected subjects
    # (subject "*"); see console/suggest.py.
    evidence: tuple[Condition, ...] = ()

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)


class RunbookError(DocumentError):
    """One or more problems in a runbook file, each already a formatted one-line message."""


# --- field types --------------------------------------------------------------------------------

_Name = Annotated[str, text(_NAME, pattern=_NAME_RE)]
_Text = Annotated[str, text()]
_OptionalText = Annotated[str | None, text(nullable=True)]


def _title(*, nullable: bool = False) -> Check:
    """A title: a step's line of output and a list's row show it on one line."""
    as_text = text(nullable=nullable)

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_text.read(value, info)
        if value is not None and len(value.strip().splitlines()) > 1:
            raise problem(f"{show(value)} spans more than one line (expected a title of one line)")
        return value

    return Check(as_text.expect, read)


def _window() -> Check:
    """A duration, or one ``{{ param }}`` of a duration parameter (kept as written: the step
    engine reads the parameter's value); the template's parameter is checked with the others."""
    as_duration = duration().read

    def read(value: Any, info: ValidationInfo) -> Any:
        if value is None or (isinstance(value, str) and "{{" in value):
            return value
        return as_duration(value, info)

    return Check(DURATION + ", or {{ param }} of a duration parameter", read)


_Window = Annotated[float | str | None, _window()]


def _one_of(what: str, choices: tuple[str, ...] | frozenset[str]) -> Check:
    """One of ``choices``: ``unknown step kind 'chek' (did you mean 'check'?)``."""
    options = sorted(choices) if isinstance(choices, frozenset) else list(choices)
    expect = f"one of: {', '.join(options)}"
    as_text = text(expect).read

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_text(value, info)
        if value not in choices:
            raise problem(f"unknown {what} {show(value)} ({suggest(value, options)})")
        return value

    return Check(expect, read)


def _subject(kind: str, *, nullable: bool = True) -> Check:
    """A subject's name, or a template (checked against the parameters by the top model)."""
    expect = f"{_a(kind)} name or {{{{ param }}}} of {_a(kind)} parameter"
    as_text = text(expect, nullable=nullable).read

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_text(value, info)
        if value is not None and "{{" not in value and not _NAME_RE.fullmatch(value):
            raise problem(f"{show(value)} is not a name (expected {expect})")
        return value

    return Check(expect, read)


def _positive() -> Check:
    expect = "a number > 0"
    as_number = number(0).read

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_number(value, info)
        if value == 0:
            raise value_problem(f"is not greater than zero (expected {expect})")
        return value

    return Check(expect, read)


def _call_named(value: object) -> object:
    """``rollback: engine.restore_args`` is the call ``{action: engine.restore_args}``."""
    return {"action": value} if isinstance(value, str) else value


# --- the file's models --------------------------------------------------------------------------


class _File(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_alias=True, validate_by_name=True
    )


class _Subject(_File):
    """``of:`` of at_most: the other subject whose same figure the condition compares with."""

    model_config = ConfigDict(title="subject")

    node: Annotated[str | None, _subject("node")] = None
    endpoint: Annotated[str | None, _subject("endpoint")] = None
    upstream: Annotated[str | None, _subject("upstream")] = None

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[_Subject], info: ValidationInfo
    ) -> _Subject:
        return _with_problems(handler, data, _subject_problems(data) if _is_map(data) else [])


class _Relative(_File):
    model_config = ConfigDict(title="relative bound")

    times: Annotated[float, _positive()]
    plus: Any = 0.0  # a number, or a duration for latency figures: checked with the figure
    of: _Subject


class _Reading(_File):
    """A figure of one subject, shown (show, evidence): no comparison."""

    model_config = ConfigDict(title="figure")

    figure: Annotated[str | None, text("a figure name such as itl_p95", nullable=True)] = None
    node: Annotated[str | None, _subject("node")] = None
    endpoint: Annotated[str | None, _subject("endpoint")] = None
    upstream: Annotated[str | None, _subject("upstream")] = None
    window_s: _Window = Field(default=None, validation_alias="window")

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[_Reading], info: ValidationInfo
    ) -> _Reading:
        found: _Problems = []
        if _is_map(data):
            data = dict(data)
            found = cls._problems(data)
        return _with_problems(handler, data, found)

    @classmethod
    def _problems(cls, data: dict[str, Any]) -> _Problems:
        """The checks across this mapping's keys; keys reported here are taken out of it."""
        found = _pop_keys(
            data,
            ("above", "below", "at_most", "min_requests"),
            "not allowed here: figures listed here are shown, not compared "
            "(expected a condition in expect or until)",
        )
        return found + _figure_problems(data)


class _Condition(_Reading):
    """A figure of one subject compared with a bound (expect, until)."""

    model_config = ConfigDict(title="condition")

    above: Any = None  # a number, or a duration for latency figures: checked with the figure
    below: Any = None
    at_most: _Relative | None = None
    min_requests: Annotated[int | None, integer(1, nullable=True)] = None

    @classmethod
    def _problems(cls, data: dict[str, Any]) -> _Problems:
        found = _figure_problems(data)
        return found + _comparison_problems(data)


class _When(_Condition):
    """``when:``: a parameter condition ``{param: P, equals|in|not: ...}`` or a figure's."""

    model_config = ConfigDict(title="when condition")

    param: Annotated[str | None, text("a parameter name", nullable=True)] = None
    equals: Any = None
    in_: Any = Field(default=None, validation_alias="in")
    not_: Any = Field(default=None, validation_alias="not")

    @classmethod
    def _problems(cls, data: dict[str, Any]) -> _Problems:
        operators = [k for k in ("equals", "in", "not") if k in data]
        if "param" not in data:
            found = _pop_keys(
                data, operators, "only with param: (expected a figure condition's keys)"
            )
            return found + _Condition._problems(data)
        found = _pop_keys(
            data,
            [k for k in data if k not in ("param", "equals", "in", "not")],
            "not allowed with param: (expected equals, in or not)",
        )
        if not operators:
            found.append(((), data, problem("no comparison (expected equals, in or not)")))
        for extra in operators[1:]:
            what = f"a second comparison ({operators[0]} is given; expected one of equals, in, not)"
            found.append(((extra,), data.pop(extra), written_key_problem(what)))
        values = data.get("in")
        if "in" in data and not (isinstance(values, list) and values):
            found.append((("in",), values, problem("is not a list of values (expected [a, b])")))
        return found


class _Call(_File):
    """An action and its arguments: a rollback (also written as the bare action name)."""

    model_config = ConfigDict(title="action call")

    action: Annotated[str, text("an action name such as engine.restore_args")]
    # None: not written, the arguments are what the step reported (see ActionCall.inherit).
    with_: Annotated[dict[str, Any] | None, null_means({})] = Field(
        default=None, validation_alias="with"
    )


class _Retry(_File):
    model_config = ConfigDict(title="retry settings")

    attempts: Annotated[int, integer(1, MAX_ATTEMPTS)] = 1
    delay_s: Duration = Field(default=DEFAULT_RETRY_DELAY_S, validation_alias="delay")


class _Command(_File):
    model_config = ConfigDict(title="command")

    node: Annotated[str, _subject("node", nullable=False)]
    run: Annotated[str, text("a read-only shell command such as journalctl -u vllm -n 50")]


_Readings = Annotated[tuple[_Reading, ...], null_means(())]
_Conditions = Annotated[tuple[_Condition, ...], null_means(())]


class _Step(_File):
    model_config = ConfigDict(title="step")

    id: Annotated[str, text(f"a step id: {_NAME}", pattern=_NAME_RE)]
    kind: Annotated[str, _one_of("step kind", STEP_KINDS)]
    title: Annotated[str | None, _title(nullable=True)] = None
    when: _When | None = None
    on_failure: Annotated[str, _one_of("on_failure", ON_FAILURE)] = "rollback"
    action: Annotated[str | None, text("an action name such as engine.set_args", nullable=True)] = (
        None
    )
    with_: Annotated[dict[str, Any], null_means({})] = Field(
        default_factory=dict, validation_alias="with"
    )
    confirm: _OptionalText = None
    rollback: Annotated[_Call | None, BeforeValidator(_call_named)] = None
    timeout_s: Duration | None = Field(default=None, validation_alias="timeout")
    retry: Annotated[_Retry, null_means({})] = Field(default_factory=_Retry)
    show: _Readings = ()
    expect: _Conditions = ()
    command: _Command | None = None
    until: _Conditions = ()
    every_s: Duration = Field(default=DEFAULT_EVERY_S, validation_alias="every")
    window_s: _Window = Field(default=None, validation_alias="window")
    hold_s: _Window = Field(default=None, validation_alias="hold")
    question: _OptionalText = None
    evidence: _Readings = ()
    text_: _OptionalText = Field(default=None, validation_alias="text")

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[_Step], info: ValidationInfo
    ) -> _Step:
        found: _Problems = []
        if _is_map(data):
            data = dict(data)
            found = _step_problems(data)
        try:
            step = handler(data)
        except ValidationError as error:
            raise_all(error, found, cls.__name__)
        if step.kind == "wait" and step.timeout_s is not None and step.every_s > step.timeout_s:
            most = format_value(step.timeout_s, "duration")
            what = f"is longer than the timeout (expected at most {most})"
            found.append((("every",), data.get("every"), value_problem(what)))
        if found:
            raise_all(None, found, cls.__name__)
        return step


class _ParamFile(_File):
    model_config = ConfigDict(title="parameter")

    type: Annotated[str, _one_of("parameter type", PARAM_TYPES)]
    description: _OptionalText = None
    required: Annotated[bool, boolean()] = False
    # These depend on the type: checked together by _read_param.
    default: Any = None
    minimum: Any = Field(default=None, validation_alias="min")
    maximum: Any = Field(default=None, validation_alias="max")
    choices: Annotated[tuple[_Name, ...] | None, null_means(())] = Field(
        default=None, description="a list of choices"
    )
    pattern: Annotated[str | None, text("a Python regular expression", nullable=True)] = None
    _param: Param | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[_ParamFile], info: ValidationInfo
    ) -> _ParamFile:
        param, found = _read_param(data) if _is_map(data) else (None, [])
        result = _with_problems(handler, data, found)
        result._param = param
        return result


def _affected(kind: str) -> Check:
    """``*``: an evidence condition is read on the incident's affected subjects of its kind."""
    expect = "* (each of the incident's affected " + kind + "s)"
    as_text = text(expect, nullable=True).read

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_text(value, info)
        if value is not None and value != "*":
            raise problem(
                f"{show(value)}: evidence is read on the incident's target (expected {expect})"
            )
        return value

    return Check(expect, read)


class _Evidence(_Condition):
    """A condition that suggests this runbook when it holds for an incident's target."""

    model_config = ConfigDict(title="evidence")

    node: Annotated[str | None, _affected("node")] = None
    endpoint: Annotated[str | None, _affected("endpoint")] = None
    upstream: Annotated[str | None, _affected("upstream")] = None

    @classmethod
    def _problems(cls, data: dict[str, Any]) -> _Problems:
        found = _pop_keys(
            data, ("at_most", "min_requests"), "not allowed in evidence (expected above or below)"
        )
        if found and not any(k in data for k in ("above", "below")):
            return found + _figure_problems(data)  # the comparison is the one said already
        return found + super()._problems(data)


class _Answers(_File):
    model_config = ConfigDict(title="answers")

    evidence: Annotated[tuple[_Evidence, ...], null_means(())] = Field(
        default=(),
        description="a list of conditions such as {figure: kv_cache_pct, node: '*', above: 90}",
    )

    alerts: Annotated[tuple[_Text, ...], null_means(())] = Field(
        default=(), description="a list of alert or figure names"
    )
    symptoms: Annotated[tuple[_Text, ...], null_means(())] = Field(
        default=(), description="a list of symptoms, each a sentence"
    )


class _RunbookFile(_File):
    model_config = ConfigDict(title="runbook")

    id: Annotated[str, text(f"a runbook id: {_NAME}", pattern=_NAME_RE)]
    title: Annotated[str, _title()]
    description: _OptionalText = None
    answers: Annotated[_Answers, null_means({})] = Field(default_factory=_Answers)
    params: Annotated[dict[str, _ParamFile], null_means({})] = Field(
        default_factory=dict, description="a mapping of parameter names to {type: ...}"
    )
    steps: tuple[_Step, ...] = Field(description="a list of steps, each a mapping with id, kind")
    _runbook: Runbook | None = PrivateAttr(None)

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, steps: tuple[_Step, ...]) -> tuple[_Step, ...]:
        if not steps:
            raise problem("is empty (expected at least one step)")
        return steps

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[_RunbookFile], info: ValidationInfo
    ) -> _RunbookFile:
        references = _References(data, info) if _is_map(data) else None
        found = references.problems() if references is not None else []
        result = _with_problems(handler, data, found)
        if references is None or not references.refused:
            # A refused parameter fails the file at the YAML reader's report: there is no
            # runbook to build (its templates name a parameter the data does not hold).
            result._runbook = _build(result, info)
        return result

    @property
    def runbook(self) -> Runbook:
        assert self._runbook is not None  # set by the validator
        return self._runbook


def _with_problems(handler: ModelWrapValidatorHandler[Any], data: Any, found: _Problems) -> Any:
    """``handler(data)``, raising its field errors together with ``found``."""
    try:
        result = handler(data)
    except ValidationError as error:
        raise_all(error, found, "runbook")
    if found:
        raise_all(None, found, "runbook")
    return result


# --- checks of one part -------------------------------------------------------------------------


def _is_map(data: object) -> bool:
    return isinstance(data, dict)


def _pop_keys(data: dict[str, Any], keys: Collection[str], what: str) -> _Problems:
    """Each of ``keys`` written in ``data``, reported at its line with ``what`` and taken out (so
    that it is not also an unknown key)."""
    return [((k,), data.pop(k), written_key_problem(what)) for k in list(keys) if k in data]


def _subject_problems(data: dict[str, Any]) -> _Problems:
    """Exactly one of node, endpoint and upstream."""
    given = [k for k in SUBJECT_KINDS if k in data]
    if not given:
        what = "no subject (expected one of node, endpoint or upstream: whose figure it is)"
        return [((), data, problem(what))]
    what = f"a second subject ({given[0]} is given; expected one of node, endpoint or upstream)"
    return [((k,), data[k], written_key_problem(what)) for k in given[1:]]


def _figure_problems(data: dict[str, Any]) -> _Problems:
    """A known figure, read for one subject it exists for."""
    found = _subject_problems(data)
    figure = data.get("figure")
    if "figure" not in data:
        what = "missing required key (expected a figure name such as itl_p95)"
        found.append((("figure",), None, key_problem(what)))
    elif isinstance(figure, str) and figure.strip():
        if figure not in FIGURES:
            what = f"unknown figure {show(figure)} ({suggest(figure, FIGURES)})"
            found.append((("figure",), figure, problem(what)))
        elif len(given := [k for k in SUBJECT_KINDS if k in data]) == 1:
            found += _figure_of(("figure",), figure, given[0])
    return found


def _figure_of(loc: Loc, figure: str, kind: str) -> _Problems:
    if kind in FIGURES[figure][0]:
        return []
    options = ", ".join(f for f, (kinds, _) in FIGURES.items() if kind in kinds)
    what = f"{figure} is not a figure of {_a(kind)} (expected one of: {options})"
    return [(loc, figure, problem(what))]


def _comparison_problems(data: dict[str, Any]) -> _Problems:
    """Exactly one of above, below and at_most, each in the figure's unit."""
    given = [k for k in ("above", "below", "at_most") if k in data]
    found: _Problems = []
    if not given:
        found.append(((), data, problem("no comparison (expected one of above, below or at_most)")))
    for extra in given[1:]:
        what = f"a second comparison ({given[0]} is given; expected one of above, below, at_most)"
        found.append(((extra,), data.pop(extra), written_key_problem(what)))
    figure = data.get("figure")
    if not (isinstance(figure, str) and figure in FIGURES):
        return found
    for key in ("above", "below"):
        if key in data:
            try:
                _threshold(data[key], figure)
            except PydanticCustomError as error:
                found.append(((key,), data[key], error))
    relative = data.get("at_most")
    if isinstance(relative, dict):
        if "plus" in relative:
            try:
                _threshold(relative["plus"], figure, low=0.0)
            except PydanticCustomError as error:
                found.append((("at_most", "plus"), relative["plus"], error))
        other = relative.get("of")
        subjects = [k for k in SUBJECT_KINDS if k in other] if isinstance(other, dict) else []
        if len(subjects) == 1:
            found += _figure_of(("at_most", "of", subjects[0]), figure, subjects[0])
    return found


def _threshold(value: object, figure: str, *, low: float | None = None) -> float:
    """A bound in ``figure``'s unit: seconds (a duration or a number) for latencies."""
    unit = FIGURES[figure][1]
    if unit == "s":
        if isinstance(value, str) and (seconds := parse_duration(value)) is not None:
            return seconds
        expect, low = "a duration such as 150ms or 2s", 0.0
    elif unit == "pct":
        expect = "a percentage from 0 to 100"
    else:
        expect = "a number" if low is None else "a number >= 0"
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _wrong(value, "a duration" if unit == "s" else "a number", expect)
    result = float(value)
    if not math.isfinite(result):
        raise value_problem(f"is not a number (expected {expect})")
    if (unit == "pct" and not 0 <= result <= 100) or (low is not None and result < low):
        raise value_problem(f"is out of range (expected {expect})")
    return result


def _step_problems(data: dict[str, Any]) -> _Problems:
    """A step's keys against its kind; the keys reported are taken out of ``data``."""
    kind = data.get("kind")
    kind = kind if isinstance(kind, str) and kind in STEP_KEYS else None
    keys = ("id", "kind", *STEP_KEYS[kind]) if kind else tuple(sorted(_ALL_STEP_KEYS))
    found: _Problems = []
    for key in [k for k in data if k not in keys]:
        if key in _ALL_STEP_KEYS:
            what = f"not allowed in a {kind} step (expected {', '.join(keys)})"
        else:
            named = "" if _TOKEN_KEY_RE.fullmatch(key) else f" {show(key)}"
            what = f"unknown key{named} ({suggest(key, keys)})"
        found.append(((key,), data.pop(key), written_key_problem(what)))
    if kind is None:
        return found  # the kind is wrong, and says so; what it needs is not known
    for key, expect in _NEEDED.get(kind, {}).items():
        if data.get(key) is None:
            what = f"missing required key (expected {expect}; a {kind} step needs it)"
            found.append(((key,), None, key_problem(what)))
    if kind == "check" and not any(data.get(k) for k in ("show", "expect", "command")):
        what = "a check step with nothing to check (expected show, expect or command)"
        found.append(((), data, problem(what)))
    if kind == "wait" and data.get("until") == []:
        found.append((("until",), [], problem("is empty (expected at least one condition)")))
    return found


def _read_param(data: dict[str, Any]) -> tuple[Param | None, _Problems]:
    """A parameter's keys that depend on its type, and the Param they make (None when wrong)."""
    kind = data.get("type")
    if not (isinstance(kind, str) and kind in PARAM_TYPES):
        return None, []  # the type says why; nothing else can be checked without it
    found: _Problems = []
    for key, types in (
        ("min", _ORDERED_TYPES),
        ("max", _ORDERED_TYPES),
        ("choices", ("enum",)),
        ("pattern", ("string",)),
    ):
        if key in data and kind not in types:
            what = (
                f"not allowed for {_a(kind)} parameter "
                f"(expected {key} only for {_or(types)} parameters)"
            )
            found.append(((key,), data[key], written_key_problem(what)))
    bounds: dict[str, float | None] = {"min": None, "max": None}
    for key in bounds:
        if key in data and kind in _ORDERED_TYPES:
            try:
                bounds[key] = _bound(kind, data[key])
            except PydanticCustomError as error:
                found.append(((key,), data[key], error))
    low, high = bounds["min"], bounds["max"]
    if low is not None and high is not None and high < low:
        what = f"is less than min (expected at least {format_value(low, kind)})"
        found.append((("max",), data["max"], value_problem(what)))
    choices = data.get("choices")
    if kind == "enum" and not choices:
        what = "missing required key (expected the list of choices of an enum parameter)"
        found.append((("choices",), choices, key_problem(what)))
    if isinstance(choices, list):
        found += _duplicates(choices)
    else:
        choices = []  # absent, or not a list: said above or by the field
    pattern = data.get("pattern")
    if isinstance(pattern, str) and kind == "string":
        try:
            re.compile(pattern)
        except re.error as error:
            what = f"is not a valid regular expression: {error.msg} (expected a Python one)"
            found.append((("pattern",), pattern, value_problem(what)))
    required = data.get("required") is True
    if "default" in data and required:
        what = (
            "a required parameter takes no default (expected required: true or a default, not both)"
        )
        found.append((("default",), data["default"], problem(what)))
    elif data.get("required") is False and "default" not in data:
        what = "is false but there is no default (expected a default, or required: true)"
        found.append((("required",), False, value_problem(what)))
    if found:
        return None, found
    if kind == "enum" and not all(isinstance(c, str) for c in choices):
        return None, []  # the choices say what is wrong with them
    param = Param(
        name="",
        type=kind,
        description=data.get("description") or "",
        required=required or "default" not in data,
        minimum=low,
        maximum=high,
        choices=tuple(choices),
        pattern=pattern if isinstance(pattern, str) else None,
    )
    if "default" not in data or required:
        return param, []
    default = data["default"]
    if isinstance(default, dict):
        fact, found = _fact_problems(kind, default)
        return (None if found else replace(param, fact=fact, fact_of=default.get("of"))), found
    try:
        return replace(param, default=_typed(param, default)), []
    except _Bad as bad:
        what = f"is {bad} (expected {param.expected})"
        return None, [(("default",), default, value_problem(what))]


def _bound(kind: str, value: object) -> float:
    """A min or max in the parameter's type: ``256``, ``1.5``, ``10s``."""
    probe = Param(name="", type=kind)
    try:
        bound = _typed(probe, value)
    except _Bad as bad:
        raise value_problem(f"is {bad} (expected {probe.expected})") from None
    assert isinstance(bound, int | float)
    return bound


def _duplicates(choices: list[object]) -> _Problems:
    seen: set[str] = set()
    found: _Problems = []
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            continue  # said by the field
        if choice in seen:
            what = f"{show(choice)} is listed twice (expected each choice once)"
            found.append((("choices", i), choice, problem(what)))
        seen.add(choice)
    return found


def _fact_problems(kind: str, default: dict[str, Any]) -> tuple[str | None, _Problems]:
    """``default: {fact: NAME, of: PARAM}``: a fact giving the parameter's type."""
    found: _Problems = [
        (("default", k), v, written_key_problem(f"unknown key ({suggest(k, ('fact', 'of'))})"))
        for k, v in default.items()
        if k not in ("fact", "of")
    ]
    fact = default.get("fact")
    loc: Loc = ("default", "fact")
    if not isinstance(fact, str):
        expect = "a fact name such as worst_itl_node"
        if "fact" in default:
            found.append((loc, fact, _wrong(fact, "a fact name", expect)))
        else:
            found.append((loc, None, key_problem(f"missing required key (expected {expect})")))
        return None, found
    if fact not in FACTS:
        found.append((loc, fact, problem(f"unknown fact {show(fact)} ({suggest(fact, FACTS)})")))
        return None, found
    same = [f for f, gives in FACTS.items() if gives == kind]
    if FACTS[fact] != kind:
        expected = f"a fact giving {_a(kind)}: {', '.join(same)}" if same else "a value"
        what = f"{fact} gives {_a(FACTS[fact])} (expected {expected})"
        found.append((loc, fact, problem(what)))
    if fact in FACTS_OF and FACTS_OF[fact][1] and "of" not in default:
        kind_of = FACTS_OF[fact][0]
        what = f"missing required key (expected the {kind_of} parameter {fact} is read for)"
        found.append((("default", "of"), None, key_problem(what)))
    elif fact not in FACTS_OF and "of" in default:
        what = f"not allowed: {fact} is read for the whole fleet (expected no of:)"
        found.append((("default", "of"), default["of"], written_key_problem(what)))
    return fact, found


# --- checks across the runbook ------------------------------------------------------------------


def _written_keys(info: ValidationInfo, loc: Loc) -> set[str]:
    """The keys written in the file in the mapping at ``loc``, those the YAML reader kept out
    of the data too."""
    document = info.context
    if not isinstance(document, Document):
        return set()
    _, node, found = document.locate(loc)
    if not found or not isinstance(node, MappingNode):
        return set()
    return {key.value for key, _ in node.value if isinstance(key, ScalarNode)}


class _References:
    """What a runbook's parts say about each other, read from the raw data so that it is
    reported even where a part has problems of its own: step ids, templates and the
    parameters they name, action calls against their specs."""

    def __init__(self, data: dict[str, Any], info: ValidationInfo) -> None:
        self.data = data
        self.info = info
        params = data.get("params")
        self.raw_params: dict[str, Any] = params if isinstance(params, dict) else {}
        # Parameters written in the file but refused by the YAML reader (a secret-named one,
        # `token:`): said once at their line, they are not also "unknown" where they are used.
        self.refused = _written_keys(info, ("params",)) - set(self.raw_params)
        self.known = set(self.raw_params) | self.refused
        self.found: _Problems = []

    def problems(self) -> _Problems:
        self.param_names()
        self.step_ids()
        steps = self.data.get("steps")
        for i, step in enumerate(steps if isinstance(steps, list) else ()):
            kind = step.get("kind") if isinstance(step, dict) else None
            if isinstance(kind, str) and kind in STEP_KEYS:
                self.step(("steps", i), step)
        return self.found

    def add(self, loc: Loc, value: object, error: PydanticCustomError) -> None:
        self.found.append((loc, value, error))

    def type_of(self, name: str) -> str | None:
        param = self.raw_params.get(name)
        kind = param.get("type") if isinstance(param, dict) else None
        return kind if isinstance(kind, str) else None

    def param_names(self) -> None:
        for name, param in self.raw_params.items():
            loc: Loc = ("params", name)
            if not _PARAM_NAME_RE.fullmatch(name):
                what = (
                    f"{show(name)} is not a parameter name (expected lowercase letters, digits "
                    "and '_', not starting with a digit)"
                )
                self.add(loc, name, written_key_problem(what))
            default = param.get("default") if isinstance(param, dict) else None
            if not isinstance(default, dict) or "of" not in default:
                continue
            of = default["of"]
            kind = FACTS_OF.get(str(default.get("fact")), ("node", True))[0]
            if isinstance(of, str) and of in self.refused:
                continue  # said at its own line
            if not isinstance(of, str) or of not in self.raw_params:
                options = [n for n in self.raw_params if self.type_of(n) == kind]
                what = f"unknown parameter {show(str(of))} ({suggest(str(of), options)})"
                self.add((*loc, "default", "of"), of, problem(what))
            elif self.type_of(of) != kind:
                what = f"{of} is not {_a(kind)} parameter (expected the {kind} it is read for)"
                self.add((*loc, "default", "of"), of, problem(what))

    def step_ids(self) -> None:
        first: dict[str, int] = {}
        for i, sid in entries(self.data.get("steps"), "id"):
            if not isinstance(sid, str):
                continue
            if sid in first:
                at = where(self.info, ("steps", first[sid], "id"))
                what = f"duplicate step id {show(sid)} (first at {at}; expected unique ids)"
                self.add(("steps", i, "id"), sid, problem(what))
            else:
                first[sid] = i

    def step(self, loc: Loc, step: dict[str, Any]) -> None:
        allowed = STEP_KEYS[step["kind"]]
        for key in ("title", "confirm", "question", "text"):
            if key in allowed:
                self.text((*loc, key), step.get(key))
        for key in ("show", "expect", "until", "evidence"):
            items = step.get(key) if key in allowed else None
            for j, item in enumerate(items if isinstance(items, list) else ()):
                self.condition((*loc, key, j), item)
        self.window((*loc, "window"), step.get("window") if "window" in allowed else None)
        self.window((*loc, "hold"), step.get("hold") if "hold" in allowed else None)
        when = step.get("when")
        if isinstance(when, dict) and "param" in when:
            self.when_param((*loc, "when"), when)
        else:
            self.condition((*loc, "when"), when)
        command = step.get("command") if "command" in allowed else None
        if isinstance(command, dict):
            self.subject((*loc, "command", "node"), "node", command.get("node"))
            if not self.shell((*loc, "command", "run"), command.get("run")):
                self.read_only((*loc, "command", "run"), command.get("run"))
        if "action" in allowed:
            aloc: Loc = (*loc, "action")
            spec = self.call(aloc, (*loc, "with"), step.get("action"), step.get("with"))
            self.rollback((*loc, "rollback"), step.get("rollback"), spec)

    # templates

    def text(self, loc: Loc, value: object) -> bool:
        """Templates in a string: each names a declared parameter. Whether one was wrong."""
        wrong = _template_problems(value, self.known) if isinstance(value, str) else []
        for what in wrong:
            self.add(loc, value, problem(what))
        return bool(wrong)

    def shell(self, loc: Loc, value: object) -> bool:
        """A shell command: templates where the shell keeps a quoted value one word of data.
        Whether something was wrong."""
        if not isinstance(value, str):
            return True  # not a command: the field says so
        templates_wrong = self.text(loc, value)
        wrong = _shell_problems(value)
        for what in wrong:
            self.add(loc, value, problem(what))
        return templates_wrong or bool(wrong)

    def read_only(self, loc: Loc, value: object) -> None:
        """A check step's command runs through node.inspect, which refuses at run time any
        command that is not one plain read-only one: the same rule, at lint. Each template
        stands for a plain value of its type, so that only the command's own text is judged
        (the values are judged again when it runs)."""
        if not isinstance(value, str):
            return
        command = _TEMPLATE_RE.sub(lambda m: shlex.quote(self.sample(m[1])), value)
        why = read_only_problem(command)
        if why:
            what = (
                f"is not a read-only command: {why} (a check step runs it through "
                "node.inspect; a change goes in a mutate step with node.run)"
            )
            self.add(loc, value, problem(what))

    def sample(self, name: str) -> str:
        """A plain value of the parameter's type, for :meth:`read_only`."""
        raw = self.raw_params.get(name)
        kind = self.type_of(name)
        if kind == "enum" and isinstance(raw, dict):
            choices = raw.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], str):
                return choices[0]
        return {"int": "1", "float": "1", "duration": "1", "bool": "true"}.get(kind or "", "x")

    def whole(self, loc: Loc, value: str, types: Collection[str], expect: str) -> None:
        """A value that is one template, of a parameter of one of ``types``."""
        wrong = _template_problems(value, self.known)
        if wrong:
            for what in wrong:
                self.add(loc, value, problem(what))
            return
        match = _TEMPLATE_RE.fullmatch(value)
        if match is None:
            self.add(loc, value, problem(f"{show(value)} is not valid (expected {expect})"))
            return
        kind = self.type_of(match[1])
        if kind in PARAM_TYPES and kind not in types:
            what = f"{match[0]} is {_a(kind)} parameter (expected {expect})"
            self.add(loc, value, problem(what))

    def subject(self, loc: Loc, kind: str, value: object) -> None:
        if isinstance(value, str) and "{{" in value:
            expect = f"{_a(kind)} name or {{{{ param }}}} of {_a(kind)} parameter"
            self.whole(loc, value, (kind,), expect)

    def window(self, loc: Loc, value: object) -> None:
        """A window may be one template of a duration parameter (drills use short ones)."""
        if isinstance(value, str) and "{{" in value:
            self.whole(loc, value, ("duration",), _ARG_EXPECT["duration"])

    def condition(self, loc: Loc, item: object) -> None:
        if not isinstance(item, dict):
            return
        self.window((*loc, "window"), item.get("window"))
        for kind in SUBJECT_KINDS:
            self.subject((*loc, kind), kind, item.get(kind))
        relative = item.get("at_most")
        other = relative.get("of") if isinstance(relative, dict) else None
        if isinstance(other, dict):
            for kind in SUBJECT_KINDS:
                self.subject((*loc, "at_most", "of", kind), kind, other.get(kind))

    def when_param(self, loc: Loc, when: dict[str, Any]) -> None:
        name = when.get("param")
        if not isinstance(name, str):
            return
        if name not in self.raw_params:
            if name not in self.refused:
                what = f"unknown parameter {show(name)} ({suggest(name, self.raw_params)})"
                self.add((*loc, "param"), name, problem(what))
            return
        raw = self.raw_params[name]
        param = _read_param(raw)[0] if isinstance(raw, dict) else None
        if param is None:
            return  # the parameter says what is wrong with it
        values: list[tuple[Loc, object]] = [
            ((*loc, k), when[k]) for k in ("equals", "not") if k in when
        ]
        listed = when.get("in")
        values += [
            ((*loc, "in", j), v) for j, v in enumerate(listed if isinstance(listed, list) else ())
        ]
        for vloc, value in values:
            try:
                _typed(param, value)
            except _Bad as bad:
                what = f"is {bad} for parameter {name} (expected {param.expected})"
                self.add(vloc, value, value_problem(what))

    # action calls

    def call(
        self, aloc: Loc, wloc: Loc, action: object, args: object, *, rollback: bool = False
    ) -> ActionSpec | None:
        """``action`` (written at ``aloc``) with ``args`` (at ``wloc``) against its spec."""
        if not isinstance(action, str):
            return None  # not written, or not a name: said by the field
        spec = ACTION_SPECS.get(action)
        if spec is None:
            what = f"unknown action {show(action)} ({suggest(action, ACTION_SPECS)})"
            self.add(aloc, action, problem(what))
            self.anything(wloc, args)
            return None
        if not spec.mutating and action != NOTE_ACTION:
            use = (
                "expected an action that undoes the step"
                if rollback
                else "expected a mutating action; use a check step with command: to read"
            )
            self.add(aloc, action, problem(f"{action} changes nothing ({use})"))
        given = args if isinstance(args, dict) else {}
        for name, value in given.items():
            arg = spec.args.get(name)
            if arg is None:
                what = f"unknown argument of {action} ({suggest(name, spec.args)})"
                self.add((*wloc, name), value, written_key_problem(what))
            else:
                self.arg((*wloc, name), arg.kind, value)
        for name, arg in spec.args.items():
            if arg.required and name not in given:
                what = f"missing required argument of {action} (expected {_ARG_EXPECT[arg.kind]})"
                self.add((*wloc, name), None, key_problem(what))
        if action == "http.request":
            self.headers((*wloc, "headers"), given.get("headers"))
        return spec

    def headers(self, loc: Loc, headers: object) -> None:
        """http.request's literal headers: none may carry a credential. The YAML reader
        refuses a secret-named one (Authorization) already; this finds the others: a name
        that says so (Cookie, X-Auth) or a value that does (Basic ..., Bearer ...)."""
        if not isinstance(headers, dict):
            return
        for name, value in headers.items():
            if _credential_header(str(name), value):
                what = (
                    "literal credentials are not allowed in the runbook (name an environment "
                    f"variable that holds it: header_env: {{{name}: VARIABLE}})"
                )
                self.add((*loc, name), value, problem(what))

    def rollback(self, rloc: Loc, rollback: object, spec: ActionSpec | None) -> None:
        """A rollback: a call with its arguments, or an action taking what the step reports."""
        if isinstance(rollback, dict):
            action, aloc = rollback.get("action"), (*rloc, "action")
            if "with" in rollback:
                self.call(aloc, (*rloc, "with"), action, rollback["with"], rollback=True)
                return
        else:
            action, aloc = rollback, rloc
        if not isinstance(action, str):
            return
        if action not in ACTION_SPECS:
            what = f"unknown action {show(action)} ({suggest(action, ACTION_SPECS)})"
            self.add(aloc, action, problem(what))
        elif spec is not None and spec.compensation != action:
            reported = (
                f"{spec.name} reports what {spec.compensation} needs to undo it"
                if spec.compensation
                else f"{spec.name} reports nothing to undo"
            )
            what = (
                f"{action} without arguments: {reported} "
                f"(expected rollback: {{action: {action}, with: {{...}}}})"
            )
            self.add(aloc, action, problem(what))

    def arg(self, loc: Loc, kind: str, value: object) -> None:
        """One argument's value against its kind (console.action_specs.ARG_KINDS)."""
        expect = _ARG_EXPECT[kind]
        if kind == "shell":
            if isinstance(value, str):
                self.shell(loc, value)
            else:
                self.add(loc, value, _wrong(value, "a string", expect))
        elif kind == "text":
            if isinstance(value, str):
                self.text(loc, value)
            else:
                self.add(loc, value, _wrong(value, "a string", expect + "; quote it"))
        elif kind in SUBJECT_KINDS or kind == "router":
            if not isinstance(value, str):
                self.add(loc, value, _wrong(value, "a name", expect))
            elif "{{" in value:
                self.whole(loc, value, (kind,) if kind != "router" else ("string",), expect)
            elif not _NAME_RE.fullmatch(value):
                self.add(loc, value, problem(f"{show(value)} is not a name (expected {expect})"))
        elif kind in ("int", "duration", "bool"):
            self.plain(loc, kind, value)
        elif kind == "mapping":
            if isinstance(value, dict):
                self.anything(loc, value)
            else:
                self.add(loc, value, _wrong(value, "a mapping", expect))
        elif kind == "names":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                self.anything(loc, value)
            else:
                self.add(loc, value, _wrong(value, "a list of names", expect))

    def plain(self, loc: Loc, kind: str, value: object) -> None:
        """An int, duration or bool argument: a value, or one template of a fitting parameter."""
        expect = _ARG_EXPECT[kind]
        if isinstance(value, str) and "{{" in value:
            types = {"int": ("int",), "duration": _ORDERED_TYPES, "bool": ("bool",)}[kind]
            self.whole(loc, value, types, expect)
            return
        try:
            _typed(Param(name="", type=kind), value)
        except _Bad as bad:
            self.add(loc, value, value_problem(f"is {bad} (expected {expect})"))

    def anything(self, loc: Loc, value: object) -> None:
        """Templates anywhere in a value; none in a mapping's keys (they are not rendered)."""
        if isinstance(value, str):
            self.text(loc, value)
        elif isinstance(value, list):
            for j, item in enumerate(value):
                self.anything((*loc, j), item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if "{{" in key:  # weights: {"{{ failing }}": 0}: a key names a thing
                    self.whole((*loc, key), key, _KEY_TYPES, _KEY_EXPECT)
                self.anything((*loc, key), item)


# Words of a header name that make it a credential, and the schemes of one in a value.
_CREDENTIAL_HEADER_WORDS = frozenset(
    {"auth", "authorization", "cookie", "session", "credential", "credentials", "apikey"}
    | {"password", "passwd", "secret", "token"}
)
_CREDENTIAL_SCHEME_RE = re.compile(
    r"(?i)\s*(?:basic|bearer|token|digest|negotiate|apikey|hmac|aws4-hmac-sha256)\s+\S"
)


def _credential_header(name: str, value: object) -> bool:
    words = set(re.split(r"[-_]", name.lower()))
    if secret_key_name(name) or words & _CREDENTIAL_HEADER_WORDS:
        return True
    return isinstance(value, str) and bool(
        _CREDENTIAL_SCHEME_RE.match(value) or looks_secret(value)
    )


_KEY_TYPES = ("string", "node", "endpoint", "upstream", "enum")
_KEY_EXPECT = "a name, or {{ param }} of a name parameter"
_ARG_EXPECT = {
    "node": "a node name or {{ param }} of a node parameter",
    "endpoint": "an endpoint name or {{ param }} of an endpoint parameter",
    "upstream": "an upstream name or {{ param }} of an upstream parameter",
    "router": "a router name or {{ param }} of a string parameter",
    "shell": "a shell command",
    "text": "a string",
    "int": "an integer or {{ param }} of an int parameter",
    "duration": "a duration such as 30s, or {{ param }} of a duration parameter",
    "bool": "true, false or {{ param }} of a bool parameter",
    "mapping": "a mapping",
    "names": "a list of names",
}


def _wrong(value: object, kind: str, expect: str) -> PydanticCustomError:
    if value is None:
        return problem(f"has no value (expected {expect})")
    return value_problem(f"is not {kind} (expected {expect})")


# --- templates ----------------------------------------------------------------------------------


def _template_problems(text: str, known: Collection[str]) -> list[str]:
    """What is wrong with the templates in ``text``: syntax, and names not declared."""
    found = [
        f"{show(m[0])} is not supported ({_TEMPLATES_ONLY})" for m in _STATEMENT_RE.finditer(text)
    ]
    start = text.find("{{")
    while start >= 0:
        end = text.find("}}", start + 2)
        if end < 0:
            found.append(f"a '{{{{' is not closed ({_TEMPLATES_ONLY})")
            break
        piece = text[start : end + 2]
        match = _TEMPLATE_RE.fullmatch(piece)
        if match is None:
            found.append(
                f"{show(piece)} is not a parameter ({_TEMPLATES_ONLY}, "
                "no filters, expressions or attributes)"
            )
        elif match[1] not in known:
            declared = suggest(match[1], known) if known else "expected params: declaring it"
            found.append(f"unknown parameter {show(match[1])} in {piece} ({declared})")
        start = text.find("{{", end + 2)
    return found


def _shell_problems(command: str) -> list[str]:
    """Templates a shell would not receive as one word of data once quoted, each said once:
    inside quotes (doubled or broken quoting), backticks (where quotes are not honoured), a
    comment or a here-document (where a newline in the value starts a command), after a
    backslash (which escapes the opening quote) or a ``$`` (``$'...'``), in bash arithmetic
    or names (where an array subscript runs commands), and words that a program parses
    again as code: ``sh -c``, ``eval``, ``ssh``, ``su -c``, a pipe into a shell, ..."""
    scan = _ShellScan(command)
    scan.scan(None)
    for pipeline in scan.pipelines:
        scan.judge(pipeline)
    # After the rules, which say more about a template inside $( ) where one applies.
    for pos, template in scan.substituted:
        scan.refuse(pos, template, _QUOTED_CONTEXT["$("])
    return [scan.found[pos] for pos in sorted(scan.found)]


# Why a template cannot stand where it is, by the context the scan found it in.
_INSIDE_QUOTES = (
    "is inside quotes (a parameter in a shell command is quoted for you; remove the quotes)"
)
_QUOTED_CONTEXT = {
    "'": _INSIDE_QUOTES,
    '"': _INSIDE_QUOTES,
    "$'": _INSIDE_QUOTES,
    "#": "is in a shell comment (expected it in the command)",
    "<<": "is in a here-document, where quotes are not honoured (expected it as an argument)",
    "`": (
        "is inside backticks, where quotes are not honoured and the value can end the "
        "substitution (expected $(...) instead of `...`)"
    ),
    "((": (
        "is in shell arithmetic, which evaluates the value as an expression (an array "
        "subscript there runs commands; expected it as an argument, as in test X -gt 3)"
    ),
    "${": "is inside ${...}, where the value is part of an expansion (expected it as a word)",
    # The value is one word for the command inside; what that prints is split into words,
    # globbed and, first on the line, run: the value can become the outer command's words.
    "$(": (
        "is inside $(...), whose output the shell splits into words and may run (expected it "
        "in a command of its own: pgrep -f X | xargs kill, not kill $(pgrep -f X))"
    ),
    "[[": (
        "is inside [[ ]], where bash evaluates operands as arithmetic (an array subscript "
        "there runs commands; expected test or [ instead)"
    ),
    # bash reads an array's items again (a=( a=( x VALUE ) runs a line of VALUE).
    "=(": "is in an array assignment, which bash reads again (expected it as an argument)",
    "[]=": (
        "is in an array subscript, which bash evaluates as arithmetic (an expression there "
        "runs commands; expected it as the value)"
    ),
}

_SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "ash", "yash", "rbash", "posh"}
    | {"lksh", "fish", "csh", "tcsh"}
)
# Variables that name a shell: `$SHELL -c ...` is sh -c.
_SHELL_VARIABLES = frozenset({"$SHELL", "${SHELL}", "$BASH", "${BASH}"})
# Programs that run the rest of their words as a command: the short options that take a
# value as the next word, and how many words (a duration, a directory) come before it.
_WRAPPERS: dict[str, tuple[str, int]] = {
    "sudo": ("CDghpRrTtUu", 0),
    "doas": ("Cu", 0),
    "env": ("CSu", 0),
    "nice": ("n", 0),
    "ionice": ("cnp", 0),
    "nohup": ("", 0),
    "setsid": ("", 0),
    "time": ("fo", 0),
    "timeout": ("ks", 1),
    "stdbuf": ("eio", 0),
    "exec": ("a", 0),
    "command": ("", 0),
    "builtin": ("", 0),
    "xargs": ("adEILnPs", 0),
    "chroot": ("", 1),
    "flock": ("Ew", 1),
    "taskset": ("", 1),
    "chrt": ("", 1),
    "busybox": ("", 0),
    "unbuffer": ("", 0),
    "runuser": ("gGu", 0),
}
_LONG_WITH_VALUE = frozenset(
    {"--user", "--group", "--prompt", "--signal", "--kill-after", "--arg-file", "--delimiter"}
    | {"--max-args", "--max-procs", "--max-lines", "--max-chars", "--chdir", "--unset"}
)
_RESERVED = frozenset(
    {"!", "{", "}", "if", "then", "else", "elif", "while", "until", "do", "coproc"}
)
_NOT_COMMANDS = frozenset({"for", "case", "select", "function", "in", "fi", "done", "esac"})
# Programs whose option runs its value as code, and that option.
_CODE_FLAGS: dict[str, tuple[str, ...]] = {
    "python": ("-c",),
    "perl": ("-e", "-E"),
    "ruby": ("-e",),
    "node": ("-e", "-p", "--eval", "--print"),
    "nodejs": ("-e", "-p", "--eval", "--print"),
    "php": ("-r",),
    "lua": ("-e",),
    "julia": ("-e",),
    "su": ("-c", "--command", "--session-command"),
    "runuser": ("-c", "--command", "--session-command"),
    "flock": ("-c", "--command"),
    "script": ("-c", "--command"),
}
# Bash builtins that read a word as a variable name or an arithmetic expression.
_NAME_BUILTINS = frozenset(
    {"declare", "typeset", "local", "readonly", "let", "read", "mapfile", "readarray", "unset"}
)
# Programs that run whatever comes on their input as code, whatever their arguments.
_INPUT_RUNNERS = frozenset({"at", "batch", "parallel"})
_ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_FD_RE = re.compile(r"[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\}")  # 2>, {fd}>: not a word


@dataclass
class _Word:
    """One word of a simple command as the scan read it."""

    start: int
    end: int = 0
    plain: str | None = ""  # its text without quotes; None once it holds a template or $
    templates: list[tuple[int, str]] = field(default_factory=list)
    # Templates inside a $( ) or <( ) in the word: the word's value is their output.
    nested: list[tuple[int, str]] = field(default_factory=list)

    def every_template(self) -> list[tuple[int, str]]:
        return self.templates + self.nested


@dataclass
class _Simple:
    """One simple command: its words, its here-strings (its input) and the templates that
    only reach it as data otherwise (redirection targets, a subshell's)."""

    words: list[_Word] = field(default_factory=list)
    here: list[_Word] = field(default_factory=list)
    other: list[tuple[int, str]] = field(default_factory=list)

    def every_template(self) -> list[tuple[int, str]]:
        found = list(self.other)
        for word in self.words + self.here:
            found += word.every_template()
        return found


class _ShellScan:
    """Reads a command as a POSIX shell (and bash) would, far enough to know each template's
    context and the simple command it is a word of. Conservative: what it cannot tell
    apart, it treats as the riskier of the two."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.found: dict[int, str] = {}  # a template's offset: why it is refused
        self.pipelines: list[list[_Simple]] = []  # every pipeline, nested ones too
        self.substituted: list[tuple[int, str]] = []  # templates inside a $( )
        self.in_test = False  # between [[ and ]]

    def refuse(self, pos: int, template: str, why: str) -> None:
        self.found.setdefault(pos, f"{template} {why}")

    def refuse_in(self, start: int, end: int, context: str) -> list[tuple[int, str]]:
        """Every template between start and end, refused for ``context``."""
        inside = [(m.start(), m[0]) for m in _TEMPLATE_RE.finditer(self.text, start, end)]
        for pos, template in inside:
            self.refuse(pos, template, _QUOTED_CONTEXT[context])
        return inside

    # -- reading

    def scan(self, closer: str | None, start: int = 0) -> tuple[list[tuple[int, str]], int]:
        """Commands from ``start`` to ``closer`` (a ``)``) or the end: every template in
        them, and where the scan stopped."""
        text, n = self.text, len(self.text)
        inside: list[tuple[int, str]] = []
        pipeline: list[_Simple] = []
        simple = _Simple()
        word: _Word | None = None
        target = ""  # "here" or "file" while reading a redirection's word
        i = start

        def end_word() -> None:
            nonlocal word, target
            if word is None:
                return  # a redirection's word may follow
            word.end = i
            if target == "here":
                simple.here.append(word)
            elif target == "file":
                simple.other += word.every_template()
            else:
                # bash's `time` (and its -p) is a reserved word too: `time [[ ... ]]` tests.
                before = (w.plain for w in simple.words)
                if word.plain == "[[" and all(
                    w in _RESERVED or w in ("time", "-p") for w in before
                ):
                    self.in_test = True
                elif word.plain == "]]":
                    self.in_test = False
                simple.words.append(word)
            word, target = None, ""

        def end_simple() -> None:
            nonlocal simple
            end_word()
            if simple.words or simple.here or simple.other:
                pipeline.append(simple)
            simple = _Simple()

        def end_pipeline() -> None:
            nonlocal pipeline
            end_simple()
            if pipeline:
                self.pipelines.append(pipeline)
            pipeline = []

        def this_word() -> _Word:
            nonlocal word
            if word is None:
                word = _Word(i)
            return word

        while i < n:
            char = text[i]
            template = _TEMPLATE_RE.match(text, i)
            if template is not None:
                if i and text[i - 1] in "\\$" and _unescaped(text, i - 1):
                    after = "a backslash" if text[i - 1] == "\\" else "a $"
                    self.refuse(
                        i,
                        template[0],
                        f"comes right after {after} (expected it as a word of its own)",
                    )
                if self.in_test:
                    self.refuse(i, template[0], _QUOTED_CONTEXT["[["])
                current = this_word()
                current.templates.append((i, template[0]))
                current.plain = None
                inside.append((i, template[0]))
                i = template.end()
                continue
            if closer is not None and char == closer:
                i += 1
                break
            if char in " \t":
                end_word()
                i += 1
            elif char == "\\":
                if text.startswith("\n", i + 1):
                    i += 2  # a line continuation
                    continue
                current = this_word()
                if _TEMPLATE_RE.match(text, i + 1):
                    i += 1  # reported as "after a backslash" with the template
                    continue
                if current.plain is not None:
                    current.plain += text[i + 1 : i + 2]
                i += 2
            elif char == "#" and word is None:
                end = text.find("\n", i)
                end = n if end < 0 else end
                inside += self.refuse_in(i, end, "#")
                i = end
            elif char == "'":
                end = text.find("'", i + 1)
                end = n if end < 0 else end
                current = this_word()
                found = self.refuse_in(i + 1, end, "'")
                inside += found
                current.plain = (
                    None if found or current.plain is None else (current.plain + text[i + 1 : end])
                )
                i = end + 1
            elif text.startswith("$'", i) or char in '"`':
                kind = "$'" if char == "$" else char
                begin = i + len(kind)
                end = self.quoted_end(begin, kind[-1])
                found = self.refuse_in(begin, end, kind)
                inside += found
                current = this_word()
                body = text[begin:end]
                plain = kind == '"' and not found and not any(c in body for c in "\\$`")
                current.plain = (
                    current.plain + body if plain and current.plain is not None else None
                )
                i = end + 1
            elif (
                text.startswith("$((", i)
                or text.startswith("$[", i)
                or (word is None and text.startswith("((", i))
            ):
                begin = i + (2 if text.startswith("$[", i) else 3 if char == "$" else 2)
                end = self.closing(begin, "[" if text.startswith("$[", i) else "((")
                inside += self.refuse_in(begin, end, "((")
                this_word().plain = None
                i = end
            elif text.startswith("${", i) and not _TEMPLATE_RE.match(text, i + 1):
                end = self.closing(i + 2, "{")
                inside += self.refuse_in(i + 2, end, "${")
                this_word().plain = None
                i = end
            elif text.startswith(("$(", "<(", ">("), i):
                current = this_word()
                substitution = char == "$"
                nested, i = self.scan(")", i + 2)
                if substitution:
                    self.substituted += nested
                current.nested += nested
                current.plain = None
                inside += nested
            elif char == "$":
                this_word().plain = None
                i += 1
            elif char == "(":
                if word is not None and text[i - 1] == "=":  # a=( ... ): an array's items
                    current = word
                    nested, end = self.scan(")", i + 1)
                    for pos, found_template in nested:
                        if text.rfind("[", i, pos) > text.rfind("]", i, pos):
                            self.refuse(pos, found_template, _QUOTED_CONTEXT["[]="])
                        self.refuse(pos, found_template, _QUOTED_CONTEXT["=("])
                    current.nested += nested
                    inside += nested
                    i = end
                    continue
                end_word()
                nested, i = self.scan(")", i + 1)  # a subshell: its own commands
                simple.other += nested
                inside += nested
            elif char == ")":
                end_simple()  # a case pattern's ) outside any subshell
                i += 1
            elif char in "\n;":
                end_pipeline()
                i += 1
            elif char == "&":
                if text.startswith("&>", i):
                    end_word()
                    target = "file"
                    i += 3 if text.startswith("&>>", i) else 2
                else:
                    end_pipeline()
                    i += 2 if text.startswith("&&", i) else 1
            elif char == "|":
                if text.startswith("||", i):
                    end_pipeline()
                    i += 2
                else:
                    end_simple()
                    i += 2 if text.startswith("|&", i) else 1
            elif char in "<>":
                if text.startswith("<<<", i):
                    if word is not None and word.plain is not None and _FD_RE.fullmatch(word.plain):
                        word = None  # 0<<<: the descriptor, not a word
                    end_word()
                    target = "here"
                    i += 3
                elif text.startswith("<<", i):
                    # A here-document: what follows is read as its text, quotes and all.
                    inside += self.refuse_in(i, n, "<<")
                    i = n
                else:
                    if word is not None and word.plain is not None and _FD_RE.fullmatch(word.plain):
                        word = None  # 2>: the descriptor, not a word
                    end_word()
                    target = "file"
                    i += 2 if text[i + 1 : i + 2] in ("<", ">", "&", "|") else 1
            else:
                current = this_word()
                if current.plain is not None:
                    current.plain += char
                i += 1
        end_pipeline()
        return inside, i

    def quoted_end(self, begin: int, quote: str) -> int:
        """Where the quote opened before ``begin`` closes (a backslash escapes the next
        character, but not a template: that is reported inside the quotes)."""
        i = begin
        while i < len(self.text):
            if self.text[i] == "\\" and not _TEMPLATE_RE.match(self.text, i + 1):
                i += 2
            elif self.text[i] == quote:
                return i
            else:
                i += 1
        return len(self.text)

    def closing(self, begin: int, opening: str) -> int:
        """The end (past the closing mark) of ``$((``, ``((``, ``$[`` or ``${`` opened
        before ``begin``: nested brackets counted, templates stepped over."""
        close = {"((": "))", "[": "]", "{": "}"}[opening]
        inner = {"((": "()", "[": "[]", "{": "{}"}[opening]
        depth, i = 0, begin
        while i < len(self.text):
            template = _TEMPLATE_RE.match(self.text, i)
            if template is not None:
                i = template.end()
                continue
            if depth == 0 and self.text.startswith(close, i):
                return i + len(close)
            if self.text[i] == inner[0]:
                depth += 1
            elif self.text[i] == inner[1]:
                depth -= 1
            i += 2 if self.text[i] == "\\" else 1
        return len(self.text)

    # -- judging

    def judge(self, pipeline: list[_Simple]) -> None:
        """The rules of each command, and of a pipe into one that runs its input."""
        for k, simple in enumerate(pipeline):
            runner = self.command(simple)
            if runner is None:
                continue
            for earlier in pipeline[:k]:
                for pos, template in earlier.every_template():
                    why = f"is piped into {runner}, which can run what it reads as code"
                    self.refuse(pos, template, why)
            for word in simple.here:
                for pos, template in word.every_template():
                    why = f"is the input of {runner}, which can run it as code"
                    self.refuse(pos, template, why)

    def code(self, word: _Word, why: str) -> None:
        for pos, template in word.every_template():
            self.refuse(pos, template, why.replace("TEMPLATE", template))

    def command(self, simple: _Simple) -> str | None:
        """Refuses the words of ``simple`` that its program parses again as code; the
        program's name when it runs what comes on its input as code."""
        words = simple.words
        self.anywhere(words)
        for word in words:  # any word: `time a[X]=1` assigns too
            assignment = _ASSIGNMENT_RE.match(self.raw(word))
            if assignment and "[" in assignment[0]:
                for pos, template in word.templates:
                    if pos < word.start + assignment.end():
                        self.refuse(pos, template, _QUOTED_CONTEXT["[]="])
        at = 0
        while at < len(words) and (
            words[at].plain in _RESERVED or _ASSIGNMENT_RE.match(self.raw(words[at]))
        ):
            at += 1
        if at < len(words) and words[at].plain in _NOT_COMMANDS:
            return None
        found, through_xargs = self.program(words, at)
        if found is None:
            return None
        at = found
        name = self.name(words[at])
        if name is None:
            return None
        args = words[at + 1 :]
        plains = [w.plain for w in args]
        if name in _SHELLS:
            return self.shell(name, args, through_xargs)
        if name in ("eval", "trap"):
            for word in args:
                self.code(
                    word,
                    f"is an argument of {name}, which parses it again as shell code "
                    "(expected the command itself)",
                )
        elif name in ("ssh", "scp"):
            for word in args:
                self.code(
                    word,
                    f"is an argument of {name}: the remote shell parses the command "
                    "and paths again, and a value can be an option such as "
                    "-oProxyCommand (expected a command run on the node itself)",
                )
            if name == "ssh" and self.ssh_reads_input(args):
                return "ssh"
        elif name == "watch":
            if not {"-x", "--exec"} & set(plains):
                for word in args:
                    self.code(
                        word,
                        "is an argument of watch, which runs its command through "
                        "sh -c (expected watch -x COMMAND ...)",
                    )
        elif name in ("sed", "gsed"):
            for word in self.scripts(args, ("-e", "--expression"), ("-f", "--file"), "fl"):
                self.code(
                    word,
                    "is in sed's script, where a value can add commands (sed's e "
                    "command runs them; expected it as a file or data)",
                )
        elif name in ("awk", "gawk", "mawk", "nawk"):
            for word in self.scripts(args, ("-e", "--source"), ("-f", "--file", "-E"), "fFvil"):
                self.code(
                    word,
                    f"is in {name}'s program, where a value can add code (system() "
                    "runs commands; expected it as data: -v name=TEMPLATE)",
                )
        elif name in ("source", "."):
            for word in args[:1]:
                self.code(word, f"is in the script {name} runs, as shell code")
        elif name in _NAME_BUILTINS:
            for word in args:
                self.code(
                    word,
                    f"is an argument of {name}, which bash reads as a name or "
                    "arithmetic (an array subscript there runs commands)",
                )
        elif name in ("printf", "test", "["):
            names = ("-v",) if name == "printf" else ("-v", "-R")
            for word in self.after_flags(args, names):
                self.code(
                    word,
                    f"names a variable for {name} -v (an array subscript there runs commands)",
                )
        elif name in _INPUT_RUNNERS:
            if name == "parallel":
                for word in args:
                    self.code(
                        word, "is an argument of parallel, which runs its command through a shell"
                    )
            return name
        if through_xargs and (name in ("eval", "sed", "awk") or self.interpreter(name)):
            return f"xargs {name}"
        flags = self.code_flags(name)
        if flags:
            for word in self.after_flags(args, flags):
                self.code(word, self.code_why(name))
            if self.interpreter(name):
                return name  # python3 alone, or a program that reads more code on its input
        return None

    def anywhere(self, words: list[_Word]) -> None:
        """``sh -c WORD`` or ``python3 -c WORD`` further into a command (docker exec, kubectl
        exec --, find -exec): WORD is code whatever runs the shell."""
        names = [self.name(word) for word in words]
        for j, name in enumerate(names):
            if name in _SHELLS:
                command = self.command_string(words[j + 1 :])
                if command is not None:
                    self.code(command, self.shell_c(name))
        # After the shells, so that runuser -u x -- sh -c WORD is said as sh -c's.
        for j, name in enumerate(names):
            if name is not None:
                for later in self.after_flags(words[j + 1 :], self.code_flags(name)):
                    self.code(later, self.code_why(name))

    def shell(self, name: str, args: list[_Word], through_xargs: bool) -> str | None:
        """A shell: its command string (-c) is code, and a template before it could be an
        option such as -c. Whatever it runs may read its input as code (sh alone, sh -s,
        sh -c sh, a script that runs one): it is always a runner of what is piped into it."""
        options, j = "", 0
        while j < len(args):
            plain = args[j].plain
            if plain is None or plain[:1] not in ("-", "+") or plain in ("-", "+"):
                break
            j += 1
            if plain == "--":
                break
            if plain in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                j += 1
            elif not plain.startswith("--"):
                options += plain[1:]
        runner = f"xargs {name}" if through_xargs else name
        if j >= len(args):
            return runner
        operand = args[j]
        if "c" in options:
            self.code(operand, self.shell_c(name))
        elif "s" in options:
            return runner  # sh -s ARGS: the arguments are data, the input is code
        else:
            self.code(
                operand,
                f"names the script {name} runs, and a value there can be an "
                f"option such as -c (expected {name} -c '...\"$1\"' {name} TEMPLATE)",
            )
        return runner

    @staticmethod
    def code_why(name: str) -> str:
        if name in _INTERPRETER_NAMES:
            return (
                f"is program text for {name}, which runs it as code (expected it as an "
                "argument after the program text)"
            )
        return (
            f"is the command of {name} -c, which a shell parses again as code (expected "
            "the command run without it, e.g. sudo -u USER COMMAND ...)"
        )

    @staticmethod
    def shell_c(name: str) -> str:
        return (
            f"is the command string of {name} -c, which parses it again as shell code "
            f"(expected it as an argument after the command string: "
            f"{name} -c '...\"$1\"' {name} TEMPLATE)"
        )

    def command_string(self, args: list[_Word]) -> _Word | None:
        """After a shell's name: the word its -c runs, if it has one."""
        has_c = False
        j = 0
        while j < len(args):
            plain = args[j].plain
            if plain is None or plain[:1] not in ("-", "+") or plain in ("-", "+"):
                return args[j] if has_c else None
            j += 1
            if plain == "--":
                return args[j] if has_c and j < len(args) else None
            if plain in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                j += 1
            elif not plain.startswith("--") and "c" in plain:
                has_c = True
        return None

    def program(self, words: list[_Word], at: int) -> tuple[int | None, bool]:
        """The word that names the program run, past sudo, env, timeout 5, xargs, ... and
        whether it is run by xargs (fed with what xargs reads)."""
        through_xargs = False
        while at < len(words):
            name = self.name(words[at])
            if name not in _WRAPPERS:
                return at, through_xargs
            if name in _CODE_FLAGS and any(
                w.plain in _CODE_FLAGS[name] or self.raw(w).startswith(_CODE_FLAGS[name])
                for w in words[at + 1 :]
            ):
                return at, through_xargs  # flock FILE -c CMD: a runner of code itself
            through_xargs = through_xargs or name == "xargs"
            takes, positional = _WRAPPERS[name]
            at += 1
            while at < len(words):
                plain = words[at].plain
                if plain is None:
                    break
                if plain == "--":
                    at += 1
                    break
                if name == "env" and _ASSIGNMENT_RE.match(plain):
                    at += 1
                elif plain.startswith("-") and len(plain) > 1:
                    at += 1
                    short = len(plain) == 2 and plain[1] in takes
                    if short or plain in _LONG_WITH_VALUE:
                        at += 1
                else:
                    break
            at += positional
        return None, through_xargs

    def name(self, word: _Word) -> str | None:
        """The program a word names (/usr/bin/sh is sh), None when it is not plain text."""
        if word.plain is None:
            return "sh" if self.raw(word) in _SHELL_VARIABLES else None
        base = posixpath.basename(word.plain)
        versioned = _VERSIONED_RE.fullmatch(base)  # python3.11, lua5.4
        return versioned[1] if versioned else base

    def raw(self, word: _Word) -> str:
        return self.text[word.start : word.end]

    @staticmethod
    def interpreter(name: str) -> bool:
        return name in _INTERPRETER_NAMES

    @staticmethod
    def code_flags(name: str) -> tuple[str, ...]:
        return _CODE_FLAGS.get(name, ())

    def after_flags(self, args: list[_Word], flags: tuple[str, ...]) -> list[_Word]:
        """The words given as the value of one of ``flags``: the next word (``-c WORD``), or
        the word itself when glued (``-cWORD``, ``--command=WORD``)."""
        found = []
        for j, word in enumerate(args):
            raw = self.raw(word)
            if word.plain in flags or self.short_cluster(word.plain, flags):
                if j + 1 < len(args):
                    found.append(args[j + 1])
            elif word.plain is None and any(
                raw.startswith(f + "=") or (not f.startswith("--") and raw.startswith(f))
                for f in flags
            ):
                found.append(word)
        return found

    @staticmethod
    def short_cluster(plain: str | None, flags: tuple[str, ...]) -> bool:
        """``-Ic``: python's -c after other single-letter options."""
        if plain is None or plain.startswith("--") or not plain.startswith("-"):
            return False
        return any(len(f) == 2 and plain.endswith(f[1]) and plain[1:].isalpha() for f in flags)

    def scripts(
        self,
        args: list[_Word],
        script_flags: tuple[str, ...],
        file_flags: tuple[str, ...],
        takes: str,
    ) -> list[_Word]:
        """The words sed or awk runs as its program: those after -e, else the first operand
        (unless -f names a file)."""
        given = self.after_flags(args, script_flags)
        if given or any(w.plain in file_flags for w in args):
            return given
        j = 0
        while j < len(args):
            plain = args[j].plain
            if plain is None or not plain.startswith("-") or plain == "-":
                return [args[j]]
            j += 1
            if plain == "--":
                return args[j : j + 1]
            if len(plain) == 2 and plain[1] in takes:
                j += 1
        return []

    def ssh_reads_input(self, args: list[_Word]) -> bool:
        """ssh with a host and no command: the remote shell runs what ssh reads."""
        operands, j = 0, 0
        while j < len(args):
            plain = args[j].plain
            j += 1
            if plain is not None and plain.startswith("-") and len(plain) > 1:
                if len(plain) == 2 and plain[1] in "BbcDEeFIiJLlmOoPpQRSWw":
                    j += 1
            else:
                operands += 1
        return operands <= 1


_INTERPRETER_NAMES = frozenset({"python", "perl", "ruby", "node", "nodejs", "php", "lua", "julia"})
_VERSIONED_RE = re.compile(r"(python|perl|ruby|php|lua)[0-9.]*")


def _unescaped(command: str, i: int) -> bool:
    """Whether the character at ``i`` is not itself escaped by a backslash before it."""
    slashes = len(command[:i]) - len(command[:i].rstrip("\\"))
    return slashes % 2 == 0


def template_names(text: str) -> tuple[str, ...]:
    """The parameters ``text`` inserts, each once, in order."""
    return tuple(dict.fromkeys(m[1] for m in _TEMPLATE_RE.finditer(text)))


def render_text(text: str, values: Mapping[str, object]) -> str:
    """``text`` with each template replaced by its parameter's value (see :func:`_inserted`)."""
    return _TEMPLATE_RE.sub(lambda m: _inserted(values[m[1]]), text)


def render_shell(text: str, values: Mapping[str, object]) -> str:
    """A shell command with each parameter inserted as one quoted word; the command's own text
    is kept as written."""
    return _TEMPLATE_RE.sub(lambda m: shlex.quote(_inserted(values[m[1]])), text)


def render_value(value: object, values: Mapping[str, object], *, shell: bool = False) -> object:
    """``value`` (an action argument as written) with its templates rendered, through mappings
    and lists. A string that is exactly one template becomes the parameter's typed value (an
    int argument stays an int), unless ``shell``: then every string is a shell command."""
    if isinstance(value, Mapping):
        return {
            render_text(k, values) if isinstance(k, str) else k: render_value(
                v, values, shell=shell
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [render_value(v, values, shell=shell) for v in value]
    if not isinstance(value, str):
        return value
    if shell:
        return render_shell(value, values)
    whole = _TEMPLATE_RE.fullmatch(value)
    return values[whole[1]] if whole else render_text(value, values)


def _inserted(value: object) -> str:
    """A typed value as text within a string: true/false, and numbers without a spurious .0
    (a duration is inserted as seconds; format_value gives the 30s form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _plain(value)
    return str(value)


def format_value(value: object, param_type: str) -> str:
    """How a typed value is shown, and written back on a command line: ``30s``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if param_type == "duration" and isinstance(value, int | float):
        return duration_text(float(value))
    return _inserted(value)


def duration_text(seconds: float) -> str:
    """The largest whole unit: 300.0 -> 5m; 0.5 -> 0.5s (which parse_duration reads back)."""
    if seconds.is_integer() and 0 < seconds < 1e15:
        for unit, size in (("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return f"{int(seconds) // size}{unit}"
    return f"{_plain(seconds)}s"


def _plain(number: float) -> str:
    """A float in positional notation that reads back exactly: 30.0 -> 30, 1e-07 -> 0.0000001."""
    return format(Decimal(repr(number)).normalize(), "f")


# --- values -------------------------------------------------------------------------------------


class ParamError(ValueError):
    """A value a parameter cannot take; the message is one line naming the parameter."""


class _Bad(Exception):
    """Why a value is not one of a parameter's, read after "is": ``not an integer``."""


def parse_param(param: Param, text: str) -> object:
    """A value typed on the command line or in the TUI, as the parameter's type.

    bool takes true/false, yes/no and 1/0; a duration 30s, 5m or seconds. Node, endpoint and
    upstream names are only checked for their shape: the caller checks that they exist.
    """
    try:
        return _from_text(param, text)
    except _Bad as bad:
        shown = text if text.isprintable() and len(text) <= 60 else show(text)
        raise ParamError(
            f"--param {param.name}={shown}: {bad} (expected {param.expected})"
        ) from None


def check_value(param: Param, value: object) -> object:
    """A typed value (from a default, a fact or code) checked against the parameter, and
    converted where the file writes it otherwise (a duration 30s, an int for a float)."""
    try:
        return _typed(param, value)
    except _Bad as bad:
        shown = repr(value) if isinstance(value, str) or value is None else _inserted(value)
        raise ParamError(f"{param.name}={shown}: {bad} (expected {param.expected})") from None


def _from_text(param: Param, text: str) -> object:
    kind = param.type
    if kind == "int":
        if not _INT_RE.fullmatch(text):
            raise _Bad("not an integer")
        try:
            return _in_range(param, int(text))
        except ValueError:  # more digits than Python converts
            raise _Bad("out of range") from None
    if kind == "float":
        if not _FLOAT_RE.fullmatch(text):
            raise _Bad("not a number")
        return _in_range(param, _finite(float(text)))
    if kind == "duration":
        seconds = parse_duration(text)
        if seconds is None:
            raise _Bad("not a duration")
        return _in_range(param, _positive_seconds(seconds))
    if kind == "bool":
        word = text.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _Bad("not true or false")
    return _named(param, text)


def _typed(param: Param, value: object) -> object:
    kind = param.type
    if kind == "duration" and isinstance(value, str):
        seconds = parse_duration(value)
        if seconds is None:
            raise _Bad("not a duration")
        return _in_range(param, _positive_seconds(seconds))
    if kind in _ORDERED_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Bad(
                {"int": "not an integer", "float": "not a number"}.get(kind, "not a duration")
            )
        if kind == "int":
            if not isinstance(value, int):
                raise _Bad("not an integer")
            return _in_range(param, value)
        number = _finite(float(value))
        return _in_range(param, _positive_seconds(number) if kind == "duration" else number)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Bad("not true or false")
        return value
    if not isinstance(value, str):
        raise _Bad("not a string")
    return _named(param, value)


def _named(param: Param, value: str) -> str:
    """A string, enum or name value."""
    if not value:
        raise _Bad("empty")
    if "\0" in value:
        raise _Bad("holding a NUL character")  # no command line can carry one
    if param.type == "enum":
        if value not in param.choices:
            raise _Bad("not one of the choices")
    elif param.type == "string":
        if param.pattern is not None and not re.fullmatch(param.pattern, value):
            raise _Bad("not matching the pattern")
    elif not _NAME_RE.fullmatch(value):
        raise _Bad(f"not {_a(param.type)} name")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise _Bad("not a finite number")
    return value


def _positive_seconds(seconds: float) -> float:
    if seconds <= 0:
        raise _Bad("not greater than zero")
    return seconds


def _in_range(param: Param, value: float) -> float:
    low, high = param.minimum, param.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Bad("out of range")
    return value


# --- the records from a valid file --------------------------------------------------------------


def _build(model: _RunbookFile, info: ValidationInfo) -> Runbook:
    params: list[Param] = []
    for name, declared in model.params.items():
        assert declared._param is not None  # the file is valid
        params.append(replace(declared._param, name=name, line=line_at(info, ("params", name))))
    by_name = {p.name: p for p in params}
    steps = tuple(_build_step(("steps", i), s, by_name, info) for i, s in enumerate(model.steps))
    return Runbook(
        id=model.id,
        title=model.title,
        description=model.description or "",
        alerts=model.answers.alerts,
        symptoms=model.answers.symptoms,
        params=tuple(params),
        steps=steps,
        path=getattr(info.context, "path", Path()),
        line=line_at(info, ()),
        evidence=tuple(
            _build_condition(c, line_at(info, ("answers", "evidence", i)))
            for i, c in enumerate(model.answers.evidence)
        ),
    )


def _build_step(loc: Loc, step: _Step, params: dict[str, Param], info: ValidationInfo) -> Step:
    def line(*keys: str | int) -> int:
        return line_at(info, (*loc, *keys))

    def conditions(key: str, items: tuple[_Reading, ...]) -> tuple[Condition, ...]:
        return tuple(_build_condition(c, line(key, j)) for j, c in enumerate(items))

    action = ActionCall(step.action, step.with_, line("action")) if step.action else None
    rollback = None
    if step.rollback is not None:
        args = step.rollback.with_
        rollback = ActionCall(step.rollback.action, args or {}, line("rollback"), args is None)
    elif action is not None and (compensation := ACTION_SPECS[action.action].compensation):
        rollback = ActionCall(compensation, {}, action.line, inherit=True)
    command = None
    if step.command is not None:
        command = Command(step.command.node, step.command.run, line("command"))
    return Step(
        id=step.id,
        kind=step.kind,
        line=line(),
        title=step.title or "",
        action=action,
        rollback=rollback,
        confirm=step.confirm,
        on_failure=step.on_failure,
        timeout_s=step.timeout_s,
        retry_attempts=step.retry.attempts,
        retry_delay_s=step.retry.delay_s,
        when=_build_when(step.when, params, line("when")) if step.when is not None else None,
        show=conditions("show", step.show),
        expect=conditions("expect", step.expect),
        until=conditions("until", step.until),
        every_s=step.every_s,
        hold_s=step.hold_s,
        window_s=step.window_s,
        command=command,
        question=step.question,
        evidence=conditions("evidence", step.evidence),
        text=step.text_,
    )


def _build_when(when: _When, params: dict[str, Param], line: int) -> WhenParam | Condition:
    if when.param is None:
        return _build_condition(when, line)
    param = params[when.param]

    def typed(value: object) -> object:
        return None if value is None else _typed(param, value)

    values = tuple(_typed(param, v) for v in when.in_ or ())
    return WhenParam(when.param, typed(when.equals), values, typed(when.not_), line)


def _build_condition(reading: _Reading, line: int) -> Condition:
    kind, subject = _subject_of(reading)
    assert reading.figure is not None  # the file is valid
    condition = Condition(reading.figure, kind, subject, window_s=reading.window_s, line=line)
    if not isinstance(reading, _Condition):
        return condition
    relative = None
    if reading.at_most is not None:
        other_kind, other = _subject_of(reading.at_most.of)
        plus = _threshold(reading.at_most.plus, reading.figure, low=0.0)
        relative = Relative(reading.at_most.times, plus, other_kind, other)
    return replace(
        condition,
        above=None if reading.above is None else _threshold(reading.above, reading.figure),
        below=None if reading.below is None else _threshold(reading.below, reading.figure),
        at_most=relative,
        min_requests=reading.min_requests,
    )


def _subject_of(model: _Subject | _Reading) -> tuple[str, str]:
    for kind in SUBJECT_KINDS:
        name = getattr(model, kind)
        if name is not None:
            return kind, name
    raise AssertionError("a valid condition has a subject")


# --- loading ------------------------------------------------------------------------------------


def load_runbook(path: Path | str) -> Runbook:
    """Read and validate a runbook file; raise RunbookError listing every problem in it."""
    try:
        file = load_document(
            path,
            _RunbookFile,
            example="runbooks/README.md",
        )
    except DocumentError as error:
        raise RunbookError(error.problems) from None
    return file.runbook


def load_folders(folders: Sequence[Path]) -> tuple[dict[str, Runbook], list[str]]:
    """Every runbook in ``folders`` by id, and the problems found; a later folder's runbook
    replaces an earlier one's with the same id (a team's folder overrides a shipped runbook)."""
    runbooks: dict[str, Runbook] = {}
    found: list[str] = []
    for folder in folders:
        loaded, problems = _load_folder(Path(folder))
        runbooks.update(loaded)
        found += problems
    return runbooks, found


def lint(paths: Sequence[Path]) -> list[str]:
    """The problems of these runbook files (a folder: its YAML files); empty when all is fine."""
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += _load_folder(path)[1]
        else:
            try:
                load_runbook(path)
            except RunbookError as error:
                found += error.problems
    return found


def shipped_folder() -> Path:
    """The folder of the runbooks shipped with the console (the ``runbooks`` package)."""
    return Path(str(files("runbooks")))


def _load_folder(folder: Path) -> tuple[dict[str, Runbook], list[str]]:
    if not folder.is_dir():
        what = "no such folder" if not folder.exists() else "is not a folder"
        return {}, [f"{folder}:1: (folder): {what} (expected a folder of runbook YAML files)"]
    runbooks: dict[str, Runbook] = {}
    found: list[str] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml")):
        try:
            runbook = load_runbook(path)
        except RunbookError as error:
            found += error.problems
            continue
        first = runbooks.get(runbook.id)
        if first is not None:
            found.append(
                f"{path}:{runbook.line}: id: duplicate runbook id {show(runbook.id)} (also in "
                f"{first.path}:{first.line}; expected one runbook per id in a folder)"
            )
            continue
        runbooks[runbook.id] = runbook
    return runbooks, found


# --- words --------------------------------------------------------------------------------------


def _a(word: str) -> str:
    """``an upstream``, ``a node``."""
    return f"an {word}" if word[:1] in ("a", "e", "i", "o", "u") else f"a {word}"


def _or(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
