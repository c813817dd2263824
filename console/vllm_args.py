"""What ``vllm serve`` accepts, per vLLM version: the packaged argument catalogues and a checker.

The catalogues (``console/data/vllm/engine-args-v*-derived.tsv``, see SOURCES.md there) were
derived from vLLM's released wheels: one row per argparse action, with its type, choices,
aliases and negative forms. :func:`check_args` reads a change to a node's ``--config`` YAML
the way vLLM's parser would (keys are flags without ``--``; ``_`` and ``-`` are
interchangeable) and says, one line per problem, what vLLM would refuse at start-up, before
the file is touched and the engine restarted on it. What the catalogues cannot know (flags
added by plugins, values checked only after parsing) is not refused here.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

_COLUMNS = (
    "flag",
    "dest",
    "group",
    "type",
    "default",
    "choices",
    "boolean_optional",
    "aliases",
    "negative_forms",
    "choices_enforced",
    "nargs",
    "argparse_type",
    "source",
    "notes",
)
_FILE_RE = re.compile(r"engine-args-v(.+)-derived\.tsv")
# Rows that are no flag a config file can set: argparse's --help and the positional model.
_NOT_SETTABLE = frozenset({"help", "model_tag"})
# vLLM's human_readable_int: 25600, 25.6k, 1M, 2G ...; the _or_auto variant adds auto and -1.
_HUMAN_INT_RE = re.compile(r"\d+(\.\d+)?[kKmMgGtT]?")
_MAX_LISTED_CHOICES = 10

# PEP 440 as far as vLLM versions go: 0.11.0, 0.11.0+cu128, 0.9.2rc1.dev3, 0.10.1.post1.
_VERSION_RE = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|c|rc|alpha|beta)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?post[-_.]?(?P<post>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev>\d*))?"
    r"(?:\+[A-Za-z0-9.]+)?",
    re.IGNORECASE,
)
_PRE_ORDER = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2}

VersionKey = tuple[tuple[int, ...], tuple[int, int], int, tuple[int, int]]


@dataclass(frozen=True)
class Argument:
    """One row of a catalogue: one argparse action of ``vllm serve``."""

    flag: str  # the primary option string, e.g. --max-num-batched-tokens
    dest: str
    group: str
    type: str  # int, float, str, bool, list, enum, json, json|str, bool|str
    default: str  # as the source writes it (a Python repr); blank when computed
    choices: tuple[str, ...]
    choices_enforced: bool  # argparse itself refuses other values
    boolean_optional: bool
    aliases: tuple[str, ...]
    negative_forms: tuple[str, ...]
    nargs: str
    argparse_type: str
    source: str
    notes: str

    @property
    def long_names(self) -> tuple[str, ...]:
        """Every ``--`` option string that sets this argument (short ones cannot be keys)."""
        names = (self.flag, *self.aliases, *self.negative_forms)
        return tuple(n for n in names if n.startswith("--"))


@dataclass(frozen=True)
class Match:
    argument: Argument
    negative: bool  # the key was a negative form (--no-X, --disable-X): true sets the dest False
    key: str  # the option string that matched, without ``--``


@dataclass(frozen=True)
class Catalogue:
    version: str
    arguments: tuple[Argument, ...] = field(repr=False)
    key: VersionKey = field(init=False, repr=False, compare=False)
    _index: dict[str, Match] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, Match] = {}
        for arg in self.arguments:
            if arg.dest in _NOT_SETTABLE:
                continue
            for name in arg.long_names:
                key = normal_key(name)
                index.setdefault(key, Match(arg, name in arg.negative_forms, key))
        for arg in self.arguments:  # a dest spelling only where no option string claims it
            if arg.dest not in _NOT_SETTABLE:
                index.setdefault(normal_key(arg.dest), Match(arg, False, normal_key(arg.flag)))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "key", version_key(self.version))

    def lookup(self, key: str) -> Match | None:
        """The argument a config-file key sets: a flag without ``--`` or a dest spelling."""
        return self._index.get(normal_key(key))

    def names(self) -> list[str]:
        """Every key a config file may use, without ``--``, for suggestions."""
        return sorted(self._index)


@dataclass(frozen=True)
class Resolved:
    """A change checked against a catalogue: keys as vLLM option names (no ``--``), typed
    values, and the problems (empty when vLLM would take it)."""

    set: dict[str, object]
    unset: tuple[str, ...]
    problems: list[str]


# --- loading -------------------------------------------------------------------------------------


@cache
def catalogues() -> tuple[Catalogue, ...]:
    """Every packaged catalogue, oldest first."""
    folder = resources.files("console").joinpath("data", "vllm")
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match:
            found.append(parse_catalogue(match[1], entry.read_text(encoding="utf-8")))
    if not found:
        raise RuntimeError("no vLLM argument catalogue is packaged in console/data/vllm")
    return tuple(sorted(found, key=lambda c: c.key))


def parse_catalogue(version: str, text: str) -> Catalogue:
    """A catalogue from its TSV text: ``#`` comment lines, a header row, one row per action."""
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    header = tuple(rows[0].split("\t")) if rows else ()
    if header != _COLUMNS:
        raise ValueError(f"vLLM {version} catalogue: unexpected columns {header}")
    arguments = []
    for number, line in enumerate(rows[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(_COLUMNS):
            raise ValueError(
                f"vLLM {version} catalogue: row {number} has {len(cells)} columns, "
                f"expected {len(_COLUMNS)}"
            )
        row = dict(zip(_COLUMNS, cells, strict=True))
        arguments.append(
            Argument(
                flag=row["flag"],
                dest=row["dest"],
                group=row["group"],
                type=row["type"],
                default=row["default"],
                choices=_split(row["choices"]),
                choices_enforced=row["choices_enforced"] == "yes",
                boolean_optional=row["boolean_optional"] == "yes",
                aliases=_split(row["aliases"]),
                negative_forms=_split(row["negative_forms"]),
                nargs=row["nargs"],
                argparse_type=row["argparse_type"],
                source=row["source"],
                notes=row["notes"],
            )
        )
    return Catalogue(version, tuple(arguments))


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part for part in cell.split(",") if part)


# --- versions ------------------------------------------------------------------------------------


def version_key(version: str) -> VersionKey:
    """A sort key that orders versions as PEP 440 does (0.9.2rc1.dev3 < 0.9.2rc1 < 0.9.2)."""
    match = _VERSION_RE.fullmatch(version.strip())
    if match is None:
        raise ValueError(f"{version!r} is not a vLLM version")
    release = tuple(int(part) for part in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:  # 0.11 == 0.11.0
        release = release[:-1]
    pre, post, dev = match["pre"], match["post"], match["dev"]
    if pre is not None:
        pre_key = (_PRE_ORDER[pre.lower()], int(match["pre_n"] or 0))
    elif dev is not None and post is None:
        pre_key = (-1, 0)  # 1.0.dev1 comes before 1.0a1
    else:
        pre_key = (3, 0)  # a final release
    post_key = int(post or 0) if post is not None else -1
    dev_key = (0, int(dev or 0)) if dev is not None else (1, 0)
    return release, pre_key, post_key, dev_key


def catalogue_for(version: str) -> tuple[Catalogue, str]:
    """The catalogue to check a node's arguments against, and a note on the choice (empty when
    the version has a catalogue of its own). Raises ValueError for text that is no version."""
    key = version_key(version)
    known = catalogues()
    exact = next((c for c in known if c.key == key), None)
    if exact is not None:
        return exact, ""
    # A pre-, post- or dev release of a catalogued release parses as that release does, more
    # nearly than as the previous catalogue (PEP 440 would put 0.33.0rc1 before 0.33.0).
    same = next((c for c in known if c.key[0] == key[0]), None)
    if same is not None:
        return same, f"vLLM {version}: checked against the {same.version} catalogue, its release"
    older = [c for c in known if c.key < key]
    if not older:
        oldest = known[0]
        return oldest, (
            f"vLLM {version} is older than every catalogue: checked against the "
            f"{oldest.version} catalogue, the oldest"
        )
    nearest = older[-1]
    if nearest is known[-1]:
        return nearest, (
            f"vLLM {version} is newer than every catalogue: checked against the "
            f"{nearest.version} catalogue, the newest (flags added since are unknown to it)"
        )
    return nearest, (
        f"vLLM {version}: checked against the {nearest.version} catalogue, the newest not after it"
    )


# --- checking ------------------------------------------------------------------------------------


def check_args(
    catalogue: Catalogue, set: Mapping[str, object], unset: Sequence[str] = ()
) -> list[str]:
    """What vLLM would refuse in a change to its config file, one line per problem."""
    return resolve_args(catalogue, set, unset).problems


def resolve_args(
    catalogue: Catalogue, set: Mapping[str, object], unset: Sequence[str] = ()
) -> Resolved:
    """The change with keys as vLLM option names and values typed (``"2048"`` -> 2048 for an
    int flag, ``"true"`` -> True for a boolean one), and its problems.

    Unset keys are not checked against the catalogue: removing a flag vLLM no longer knows is
    how a broken file gets fixed.
    """
    problems: list[str] = []
    resolved: dict[str, object] = {}
    seen: dict[str, str] = {}  # dest -> the key that set it
    for key, value in set.items():
        match = catalogue.lookup(str(key))
        if match is None:
            problems.append(unknown_flag(catalogue, str(key)))
            continue
        dest = match.argument.dest
        if dest in seen:
            flag = match.argument.flag
            problems.append(f"{flag} is given twice (as {seen[dest]} and {key})")
            continue
        seen[dest] = str(key)
        typed, problem = typed_value(match, value)
        if problem:
            problems.append(f"--{match.key}: {problem}")
        else:
            resolved[match.key] = typed
    names: list[str] = []
    for key in unset:
        match = catalogue.lookup(key)
        name = match.key if match else normal_key(key)
        if match is not None and match.argument.dest in seen:
            problems.append(f"--{name} is both set and unset")
        elif name not in names:
            names.append(name)
    return Resolved(resolved, tuple(names), problems)


def unknown_flag(catalogue: Catalogue, key: str) -> str:
    """Why ``key`` is refused: gone since an older catalogue, new in a newer one, or a typo."""
    name = normal_key(key)
    older = [c for c in catalogues() if c.key < catalogue.key and c.lookup(name)]
    newer = [c for c in catalogues() if c.key > catalogue.key and c.lookup(name)]
    head = f"--{name} is not an argument of vLLM {catalogue.version}"
    if older:
        return f"{head} (it was in {older[-1].version} and is gone)"
    if newer:
        return f"{head} (it is new in {newer[0].version})"
    close = difflib.get_close_matches(name, catalogue.names(), n=1)
    return f"{head} (did you mean --{close[0]}?)" if close else head


def typed_value(match: Match, value: object) -> tuple[object, str]:
    """``value`` as the config file should hold it, or a problem (then the value is None)."""
    arg = match.argument
    if value is None:
        return None, "no value (to remove a flag, unset it)"
    if match.negative or arg.type == "bool":
        flag = _boolean(value)
        return (flag, "") if flag is not None else (None, f"expected true or false, got {value!r}")
    if arg.type == "list" or arg.nargs in ("+", "*"):
        items = list(value) if isinstance(value, list | tuple) else [value]
        typed = []
        # A list flag's type= callable converts each item: int for --cuda-graph-sizes.
        kind = "int" if "int" in arg.argparse_type else "str"
        for item in items:
            one, problem = _scalar(arg, item, kind)
            if problem:
                return None, problem
            typed.append(one)
        return (typed if isinstance(value, list | tuple) else typed[0]), ""
    return _scalar(arg, value, arg.type)


def _scalar(arg: Argument, value: object, kind: str) -> tuple[object, str]:
    if kind == "bool|str":
        if isinstance(value, bool | str):
            return value, ""
        return None, f"expected true or a string, got {value!r}"
    if kind in ("json", "json|str"):
        return _json(kind, value)
    if isinstance(value, bool | dict | list | tuple):
        return None, f"expected {_expected(kind)}, got {value!r}"
    if kind == "int" or (kind == "enum" and arg.argparse_type == "int"):
        typed, problem = _integer(arg, value)
    elif kind == "float":
        typed, problem = _float(value)
    else:
        typed, problem = value, ""
    if problem:
        return None, problem
    return _in_choices(arg, typed)


def _integer(arg: Argument, value: object) -> tuple[object, str]:
    if isinstance(value, int):
        return value, ""
    text = str(value).strip()
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text), ""
    # vLLM parses 32k, 1M, ... itself; the text is kept so that its meaning is vLLM's.
    if "human_readable_int" in arg.argparse_type and (
        _HUMAN_INT_RE.fullmatch(text) or ("or_auto" in arg.argparse_type and text == "auto")
    ):
        return text, ""
    return None, f"expected an int, got {value!r}"


def _float(value: object) -> tuple[object, str]:
    if isinstance(value, int | float):
        number: float = float(value)
    else:
        try:
            number = float(str(value))
        except ValueError:
            return None, f"expected a number, got {value!r}"
    if not math.isfinite(number):
        return None, f"expected a finite number, got {value!r}"
    return value if isinstance(value, int | float) else number, ""


def _json(kind: str, value: object) -> tuple[object, str]:
    if isinstance(value, dict | list):
        return value, ""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            if kind == "json|str":
                return value, ""
            return None, f"expected a mapping or JSON text, got {value!r}"
        return value, ""
    return None, f"expected a mapping or JSON text, got {value!r}"


def _in_choices(arg: Argument, value: object) -> tuple[object, str]:
    """Only where argparse itself enforces choices: the others are checked later by vLLM
    against lists that plugins may extend, so refusing them here could refuse a good value."""
    if not arg.choices_enforced or not arg.choices or "<computed>" in arg.choices:
        return value, ""
    text = str(value)
    # A few choices are matched after a lower-casing type= callable (a lambda in the table).
    if text in arg.choices or (arg.argparse_type == "lambda" and text.lower() in arg.choices):
        return value, ""
    choices = [c for c in arg.choices if c != "None"]
    close = difflib.get_close_matches(text, choices, n=1)
    if close:
        return None, f"{value!r} is not one of its choices (did you mean {close[0]!r}?)"
    listed = ", ".join(choices[:_MAX_LISTED_CHOICES])
    more = f", ... ({len(choices)} in all)" if len(choices) > _MAX_LISTED_CHOICES else ""
    return None, f"{value!r} is not one of {listed}{more}"


def _boolean(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    return {"true": True, "false": False}.get(word) if word else None


def _expected(kind: str) -> str:
    return {"int": "an int", "float": "a number"}.get(kind, "a string")


def normal_key(key: str) -> str:
    """A key as vLLM compares it: without ``--``, ``_`` read as ``-``."""
    return key.strip().removeprefix("--").replace("_", "-")
