"""The YAML front end shared by the config and the runbooks: one file in, one validated model out.

A file is read and composed with PyYAML's SafeLoader; nothing is ever constructed from a tag
(an unsupported tag is named and refused). Duplicate keys, merge keys and literal secrets are
refused, the document becomes plain data, and a pydantic v2 model validates it. Every problem,
from the YAML or from the schema, is one line ``FILE:LINE: key.path: what is wrong (expected
...)``, found through the path-to-line index, and all of a file's problems come at once, in line
order. The second half is the toolkit schemas are declared with: field types that say what they
expect, and the problem kinds their validators raise.

This module knows no schema of its own and imports nothing of the console's but console.redact.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
)
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_core import core_schema as cs
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from console.redact import looks_secret, secret_key_name

Loc = tuple[str | int, ...]  # a key path as pydantic gives it: ("nodes", 0, "host")
M = TypeVar("M", bound=BaseModel)

# The problem kinds a validator raises (see value_problem, problem, key_problem and
# written_key_problem).
VALUE_PROBLEM = "yaml_value"
PROBLEM = "yaml_problem"
KEY_PROBLEM = "yaml_key"
WRITTEN_KEY_PROBLEM = "yaml_written_key"

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_MAP = _TAG + "map"
_SEQ = _TAG + "seq"
_MERGE = _TAG + "merge"
_CONSTRUCTED = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "timestamp"))
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # keys that can be written into a key.path as they are
# PyYAML contexts of constructs that run until a closing mark: an error inside one is reported
# where it was opened (an unclosed `[` is found lines later, at whatever follows it).
_OPENED_CONSTRUCTS = (
    "while parsing a flow",
    "while scanning a quoted scalar",
    "while scanning a simple key",
)
_MAPPING_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
_LIST_ERRORS = frozenset({"tuple_type", "list_type"})
_KNOWN_ERRORS = frozenset(get_args(cs.ErrorType))


class DocumentError(Exception):
    """One or more problems in a YAML document, each already a formatted one-line message."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Unusable:
    """Data that stands in for a node the schema must not see."""


_REPORTED = _Unusable()  # a secret or an unsupported tag: said once, never echoed
_CYCLE = _Unusable()  # an alias inside the value it refers to


# --- the document and its index ----------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """A composed YAML file: where each key path (list items too) was written.

    Validators get it as the validation context (see :func:`line_at`, :func:`folder`).
    """

    path: Path
    root: MappingNode

    def locate(self, loc: Loc) -> tuple[Node | None, Node, bool]:
        """(key node, value node, found) for ``loc``: the deepest part of it that is written."""
        key: Node | None = None
        node: Node = self.root
        for part in loc:
            if isinstance(node, MappingNode) and isinstance(part, str):
                pair = next((p for p in node.value if _key_text(p[0]) == part), None)
                if pair is None:
                    return key, node, False
                key, node = pair
            elif (
                isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value)
            ):
                key, node = None, node.value[part]
            else:
                return key, node, False
        return key, node, True

    def line(self, loc: Loc) -> int:
        """The line of the value at ``loc``, or of the nearest enclosing one that is written."""
        return _line(self.locate(loc)[1])

    def key_line(self, loc: Loc) -> int:
        key, node, _ = self.locate(loc)
        return _line(key if key is not None else node)

    def written(self, loc: Loc) -> bool:
        return self.locate(loc)[2]


def line_at(info: ValidationInfo, loc: Loc) -> int:
    """In a validator: the line where ``loc`` is written, 0 when not validating a document."""
    document = info.context
    if isinstance(document, Document) and document.written(loc):
        return document.line(loc)
    return 0


def where(info: ValidationInfo, loc: Loc) -> str:
    """In a message: ``line 5`` in a document, else the key path."""
    line = line_at(info, loc)
    return f"line {line}" if line else _display(loc)


def folder(info: ValidationInfo) -> Path | None:
    """The folder of the document being validated: relative paths in it start there."""
    document = info.context
    return document.path.absolute().parent if isinstance(document, Document) else None


# --- loading -------------------------------------------------------------------------------------


def load_document(
    path: Path | str,
    model: type[M],
    *,
    example: str = "",
    secret_hint: str = "name an environment variable that holds it",
) -> M:
    """Read ``path`` and validate it against ``model``; raise DocumentError with every problem.

    ``example`` names a documented example file, offered when the file does not exist;
    ``secret_hint`` says where a secret goes instead, when the file holds one.
    """
    report = _Report(str(path))
    root = _compose(Path(path), model, report, example)
    if root is None:
        raise DocumentError(report.lines())
    document = Document(Path(path), root)
    try:
        secret = f"literal secrets are not allowed in the {_title(model)} ({secret_hint})"
        data = _Reader(report, secret).value(root, "")
        result = _validate(model, data, document, report) if isinstance(data, dict) else None
    except RecursionError:  # aliases can build what the composer's own limit did not catch
        report.add(1, "(yaml)", "nested too deeply (expected a few levels of keys)")
        result = None
    if result is None or report.found:
        raise DocumentError(report.lines())
    return result


@dataclass
class _Report:
    """The problems found in one file, each kept with its line for the final ordering."""

    file: str
    found: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, path: str, what: str) -> None:
        what = what.replace("\r", " ").replace("\n", " ")
        self.found.append((line, f"{self.file}:{line}: {path or '(top)'}: {what}"))

    def at(self, node: Node, path: str, what: str) -> None:
        self.add(_line(node), path, what)

    def lines(self) -> list[str]:
        return [text for _, text in sorted(self.found, key=lambda p: p[0])]


def _compose(
    path: Path, model: type[BaseModel], report: _Report, example: str
) -> MappingNode | None:
    text = _read_text(path, _title(model), report, example)
    if text is None:
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        report.add(*_syntax_problem(error))
        return None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        char = f"#x{error.character:04x}" if isinstance(error.character, int) else "character"
        report.add(line, "(yaml)", f"unacceptable character {char} (expected printable text)")
        return None
    except yaml.YAMLError as error:
        report.add(1, "(yaml)", f"{' '.join(str(error).split())} (expected valid YAML)")
        return None
    except RecursionError:
        report.add(1, "(yaml)", "nested too deeply (expected a few levels of keys)")
        return None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
        report.add(1, "(file)", f"is empty (expected {_expected_mapping(model)})")
        return None
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        report.at(root, "(top)", f"the top level is {kind} (expected {_expected_mapping(model)})")
        return None
    return root


def _read_text(path: Path, title: str, report: _Report, example: str) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        see = f"; see {example}" if example else ""
        report.add(1, "(file)", f"no such file (expected a YAML {title}{see})")
        return None
    except IsADirectoryError:
        report.add(1, "(file)", f"is a directory (expected a YAML {title} file)")
        return None
    except OSError as error:
        why = error.strerror or error
        report.add(1, "(file)", f"cannot be read: {why} (expected a readable file)")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        report.add(line, "(file)", "is not UTF-8 text (expected a UTF-8 YAML file)")
        return None


def _syntax_problem(error: yaml.MarkedYAMLError) -> tuple[int, str, str]:
    """(line, "(yaml)", message): where the broken construct starts when the parser says so."""
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark else 1
    problem = error.problem or error.context or "invalid YAML"
    if "\\t" in problem:
        return line, "(yaml)", f"{problem} (expected indentation with spaces, not tabs)"
    if not (error.context and error.problem and error.context_mark):
        return line, "(yaml)", f"{problem} (expected valid YAML)"
    start = error.context_mark.line + 1
    if error.context.startswith(_OPENED_CONSTRUCTS) and start < line:
        return start, "(yaml)", f"{problem} at line {line} ({error.context} started on this line)"
    # PyYAML's context says what it was reading, or what it expected, and where that began.
    return line, "(yaml)", f"{problem} ({error.context} at line {start})"


class _Reader:
    """Turns composed nodes into plain data, reporting what plain data must not hold.

    Each node is read once (aliases share the result), so each problem is reported once.
    """

    def __init__(self, report: _Report, secret: str) -> None:
        self.report = report
        self.secret = secret  # the message for a literal secret
        self.constructor = SafeConstructor()
        self.done: dict[int, Any] = {}
        self.reading: set[int] = set()

    def value(self, node: Node, path: str) -> Any:
        if id(node) in self.done:
            return self.done[id(node)]
        if id(node) in self.reading:  # `a: &a {x: *a}`: the schema is told, not looped on
            return _CYCLE
        self.reading.add(id(node))
        value: Any
        if isinstance(node, MappingNode):
            value = self.mapping(node, path)
        elif isinstance(node, SequenceNode):
            value = [self.value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        else:
            value = self.scalar(node, path)
        if node.tag not in (_MAP, _SEQ) and not isinstance(node, ScalarNode):
            value = self.unsupported_tag(node, path)
        self.reading.discard(id(node))
        self.done[id(node)] = value
        return value

    def scalar(self, node: Node, path: str) -> Any:
        if looks_secret(node.value):
            self.report.at(node, path, self.secret)
            return _REPORTED
        if node.tag == _STR:
            return node.value
        if node.tag not in _CONSTRUCTED:
            return self.unsupported_tag(node, path)
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, LookupError, ArithmeticError):
            tag = _tag_name(node.tag)
            self.report.at(node, path, f"{_describe(node)} is not a valid {tag} (expected one)")
            return _REPORTED

    def unsupported_tag(self, node: Node, path: str) -> Any:
        tag = _tag_name(node.tag)
        self.report.at(node, path, f"the YAML tag {tag} is not supported (expected plain YAML)")
        return _REPORTED

    def mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        data: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key, child in node.value:
            if not isinstance(key, ScalarNode):
                self.value(key, path)  # read for its secrets; it is never a key of the schema
                self.value(child, path)
                self.report.at(key, path, f"{_describe(key)} cannot be a key (expected a name)")
                continue
            name = key.value
            kpath = _key_path(path, name)
            if secret_key_name(name) and not _names_variables(path):
                self.report.at(key, kpath, self.secret)  # the whole value is the secret
            elif looks_secret(name):
                self.report.at(key, path, self.secret)  # the key is the secret: not in the path
                self.value(child, path)
            elif key.tag == _MERGE:
                self.report.at(key, path, "merge keys (<<) are not supported (expected plain keys)")
            elif name in first:
                named = "" if kpath != path else f" {show(name)}"
                self.report.at(key, kpath, f"duplicate key{named} (first at line {first[name]})")
                self.value(child, kpath)
            else:
                first[name] = _line(key)
                data[name] = self.value(child, kpath)
        return data


# --- validation and its errors -------------------------------------------------------------------


def _validate(
    model: type[M], data: dict[str, Any], document: Document, report: _Report
) -> M | None:
    try:
        # By alias only: the file spells `every: 15s`, code spells ProbeConfig(every_s=15.0).
        return model.model_validate(data, context=document, by_alias=True, by_name=False)
    except ValidationError as error:
        explain = _Explainer(model, document)
        for detail in error.errors(include_url=False):
            if (found := explain(detail)) is not None:
                report.add(*found)
        return None


@dataclass(frozen=True)
class _Explainer:
    """Turns one pydantic error into (line, key.path, message), or None when already said."""

    model: type[BaseModel]
    document: Document

    def __call__(self, detail: ErrorDetails) -> tuple[int, str, str] | None:
        loc: Loc = tuple(detail["loc"])
        kind, value, msg = detail["type"], detail["input"], detail["msg"]
        if kind == "extra_forbidden":
            return self.unknown_key(loc)
        if value is _REPORTED:
            return None
        if kind in ("missing", KEY_PROBLEM):  # about a key of a mapping: at the mapping
            what = (
                f"missing required key (expected {self.expect(loc)})" if kind == "missing" else msg
            )
            return self.document.line(loc[:-1]), _display(loc), what
        line, path = self.document.line(loc), _display(loc)
        node = self.document.locate(loc)[1]
        if value is _CYCLE:
            return line, path, f"refers to itself through an alias (expected {self.expect(loc)})"
        if kind == VALUE_PROBLEM:
            return line, path, f"{_describe(node)} {msg}"
        if kind == PROBLEM:
            return line, path, msg
        if kind == WRITTEN_KEY_PROBLEM:
            return self.document.key_line(loc), path, msg
        if kind in _MAPPING_ERRORS:
            return line, path, _wrong_text(value, _describe(node), "a mapping", self.expect(loc))
        if kind in _LIST_ERRORS:
            return line, path, _wrong_text(value, _describe(node), "a list", self.expect(loc))
        return line, path, f"{_describe(node)} is not valid ({msg})"

    def unknown_key(self, loc: Loc) -> tuple[int, str, str]:
        parent, key = loc[:-1], str(loc[-1])
        target = _unwrap(_walk(self.model, parent)[0])
        keys = list(_keys(target)) if _is_model(target) else []
        kpath = _key_path(_display(parent), key)
        named = "" if kpath != _display(parent) else f" {show(key)}"
        return self.document.key_line(loc), kpath, f"unknown key{named} ({suggest(key, keys)})"

    def expect(self, loc: Loc) -> str:
        annotation, info = _walk(self.model, loc)
        if info is not None and info.description:
            return info.description
        return _expectation(annotation)


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Any, FieldInfo | None]:
    """The declared type at ``loc`` (Annotated metadata kept), and its field when a key."""
    annotation: Any = model
    info: FieldInfo | None = None
    for part in loc:
        target = _unwrap(annotation)
        if isinstance(part, int) and get_origin(target) in (tuple, list) and get_args(target):
            annotation, info = get_args(target)[0], None
        elif isinstance(part, str) and _is_model(target) and part in _keys(target):
            info = _keys(target)[part]
            annotation = (
                Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            )
        else:
            return None, None
    return annotation, info


def _unwrap(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and from ``X | None``."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        others = [a for a in get_args(annotation) if a is not type(None)]
        if len(others) == 1:
            return others[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key a file writes them with, in declaration order."""
    return {
        f.validation_alias if isinstance(f.validation_alias, str) else name: f
        for name, f in model.model_fields.items()
    }


def _title(model: type[BaseModel]) -> str:
    return model.model_config.get("title") or model.__name__.lower()


def _expected_mapping(model: type[BaseModel]) -> str:
    """What a mapping for ``model`` looks like: ``a node: a mapping with name, host``."""
    required = [key for key, f in _keys(model).items() if f.is_required()]
    if required:
        return f"a {_title(model)}: a mapping with {', '.join(required)}"
    return f"a mapping of {_title(model)}"


def _expectation(annotation: Any) -> str:
    """What a good value of a declared type is, for a message."""
    if get_origin(annotation) is Annotated:
        check = next((m for m in get_args(annotation)[1:] if isinstance(m, Check)), None)
        if check is not None:
            return check.expect
    target = _unwrap(annotation)
    if _is_model(target):
        return _expected_mapping(target)
    if get_origin(target) in (tuple, list) and get_args(target):
        item = _unwrap(get_args(target)[0])
        if _is_model(item):
            required = [key for key, f in _keys(item).items() if f.is_required()]
            each = f", each a mapping with {', '.join(required)}" if required else ""
            return f"a list of {_title(item)}s{each}"
        return f"a list of {_expectation(get_args(target)[0])}"
    return "a valid value"


# --- the toolkit schemas are declared with -------------------------------------------------------


def value_problem(what: str) -> PydanticCustomError:
    """A problem shown after the value as the file writes it: ``.nan is not a number (...)``."""
    return PydanticCustomError(VALUE_PROBLEM, what)


def problem(message: str) -> PydanticCustomError:
    """A problem shown as it is, at the value's line."""
    return PydanticCustomError(PROBLEM, message)


def key_problem(message: str) -> PydanticCustomError:
    """A problem with a key of a mapping (present or not), shown at the mapping's line."""
    return PydanticCustomError(KEY_PROBLEM, message)


def written_key_problem(message: str) -> PydanticCustomError:
    """A problem with a key that is written (one not allowed there), shown at the key's line:
    a block value starts on the line after its key."""
    return PydanticCustomError(WRITTEN_KEY_PROBLEM, message)


def wrong(value: object, kind: str, expect: str) -> PydanticCustomError:
    """``value`` is not ``kind``: ``has no value`` for a null."""
    if value is None:
        return problem(f"has no value (expected {expect})")
    return value_problem(f"is not {kind} (expected {expect})")


def _wrong_text(value: object, described: str, kind: str, expect: str) -> str:
    if value is None:
        return f"has no value (expected {expect})"
    return f"{described} is not {kind} (expected {expect})"


def raise_all(
    error: ValidationError | None,
    problems: list[tuple[Loc, object, PydanticCustomError]],
    title: str,
) -> NoReturn:
    """Raise the field errors of ``error`` together with the (loc, input, problem) found by a
    model's own checks, so that a file's cross-field problems come with all the others."""
    details: list[InitErrorDetails] = [_reraisable(d) for d in error.errors()] if error else []
    details += [{"type": p, "loc": loc, "input": value} for loc, value, p in problems]
    raise ValidationError.from_exception_data(title, details)


def _reraisable(detail: ErrorDetails) -> InitErrorDetails:
    if detail["type"] in _KNOWN_ERRORS:
        again: InitErrorDetails = {
            "type": detail["type"],
            "loc": detail["loc"],
            "input": detail["input"],
        }
        if "ctx" in detail:
            again["ctx"] = detail["ctx"]
        return again
    # Custom problems carry their message already formatted (they are made without a context).
    error = PydanticCustomError(detail["type"], detail["msg"])
    return {"type": error, "loc": detail["loc"], "input": detail["input"]}


def null_means(empty: object) -> BeforeValidator:
    """``key:`` with nothing after it (everything under it commented out) reads as ``empty``."""
    return BeforeValidator(lambda value: empty if value is None else value)


@dataclass(frozen=True)
class Check:
    """A field type's whole validation, and what a good value is (for missing-key messages).

    Used as ``Annotated[int, integer(1, 64)]``; ``read`` returns the value or raises one of
    the problems above.
    """

    expect: str
    read: Callable[[Any, ValidationInfo], Any]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return cs.with_info_plain_validator_function(self.read)


DURATION = "a number of seconds or e.g. 500ms, 15s, 2m, 1h"
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


def text(
    expect: str = "a non-empty string",
    *,
    pattern: re.Pattern[str] | None = None,
    choices: tuple[str, ...] = (),
    nullable: bool = False,
) -> Check:
    def read(value: Any, info: ValidationInfo) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            # Numbers and booleans are not silently turned into text: quoting is explicit.
            quote = value is not None and not isinstance(value, dict | list | tuple)
            raise wrong(value, "a string", expect + ("; quote it" if quote else ""))
        if not value.strip():
            raise problem(f"is empty (expected {expect})")
        if choices and value not in choices:
            raise problem(f"{show(value)} is not supported ({suggest(value, choices)})")
        if pattern and not pattern.fullmatch(value):
            raise problem(f"{show(value)} is not valid (expected {expect})")
        return value

    return Check(expect, read)


def integer(low: int, high: int | None = None, *, nullable: bool = False) -> Check:
    expect = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def read(value: Any, info: ValidationInfo) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong(value, "an integer", expect)
        if value < low or (high is not None and value > high):
            raise value_problem(f"is out of range (expected {expect})")
        return value

    return Check(expect, read)


def boolean() -> Check:
    """true or false, and nothing YAML 1.1 would also read as one (yes, on) nor 0 and 1."""
    expect = "true or false"

    def read(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool):
            raise wrong(value, "a boolean", expect)
        return value

    return Check(expect, read)


def number(low: float, high: float | None = None) -> Check:
    expect = f"a number from {low:g} to {high:g}" if high is not None else f"a number >= {low:g}"

    def read(value: Any, info: ValidationInfo) -> Any:
        if not _is_number(value):
            raise wrong(value, "a number", expect)
        result = _finite(value)
        if result is None or result < low or (high is not None and result > high):
            raise value_problem(f"is out of range (expected {expect})")
        return result

    return Check(expect, read)


def parse_duration(text: str) -> float | None:
    """Seconds from ``500ms``, ``15s``, ``2m``, ``1h`` or a bare number; None if not one."""
    match = _DURATION_RE.fullmatch(text)
    return float(match[1]) * _UNITS[match[2] or "s"] if match else None


def duration(minimum_s: float = 0.0) -> Check:
    """Seconds as a float, from a number or a string such as ``500ms``, ``15s``, ``2m``, ``1h``."""
    expect = DURATION if not minimum_s else f"{DURATION}; at least {minimum_s * 1000:g}ms"

    def read(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and (seconds := parse_duration(value)) is not None:
            value = seconds
        elif not _is_number(value):
            raise wrong(value, "a duration", expect)
        if math.isnan(value):  # e.g. `.nan`
            raise value_problem(f"is not a number (expected {expect})")
        seconds = _finite(value)
        if seconds is None:
            raise value_problem(f"is too long (expected {expect})")
        if seconds <= 0:
            raise value_problem(f"is not greater than zero (expected {expect})")
        if seconds < minimum_s:
            raise value_problem(f"is too short (expected {expect})")
        return seconds

    return Check(expect, read)


def url() -> Check:
    """An http:// or https:// URL with a host and, when given, a port from 1 to 65535."""
    expect = "an http:// or https:// URL, e.g. http://10.0.3.11:8000/v1"
    as_text = text(expect).read

    def read(value: Any, info: ValidationInfo) -> Any:
        value = as_text(value, info)
        try:
            parts = urlsplit(value)
            ok = bool(parts.hostname)
            port = parts.port  # ValueError when not a number in 0..65535
        except ValueError:  # e.g. an unclosed [IPv6 address
            ok, port = False, None
        if not ok or not value.startswith(("http://", "https://")) or not value.isprintable():
            raise problem(f"{show(value)} is not a URL (expected {expect})")
        if port == 0:
            raise problem(f"{show(value)} has port 0 (expected 1 to 65535)")
        return value

    return Check(expect, read)


def file_path(expect: str = "a file path") -> Check:
    """A local path: ``~`` expanded, relative paths taken from the document's folder."""
    as_text = text(expect).read

    def read(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, Path):  # made in code, not read from a file
            return value
        value = as_text(value, info)
        # os.path.expanduser leaves an unknown ~user alone where Path.expanduser raises.
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):
            raise problem(
                f"{show(value)} cannot be expanded (expected an absolute path, ~/..., "
                "or a path relative to this file's folder)"
            )
        base = folder(info)
        return base / expanded if base else Path(expanded)

    return Check(expect, read)


Duration = Annotated[float, duration()]
HttpUrl = Annotated[str, url()]
FilePath = Annotated[Path, file_path()]
EnvVarName = Annotated[
    str | None,
    text("an environment variable name such as PRIMARY_API_KEY", pattern=_ENV_RE, nullable=True),
]


# --- small helpers -------------------------------------------------------------------------------


def suggest(word: str, options: Iterable[str]) -> str:
    """``did you mean 'x'?`` for a close option, else the options."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(options) if options else "expected none"


def show(text: str) -> str:
    """A value quoted for a message: repr keeps it on one line, the cut keeps it short."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe(node: Node) -> str:
    """A value as the file writes it, for a message."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag in _CONSTRUCTED and node.value.isprintable():
        return node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return show(node.value)


def _tag_name(tag: str) -> str:
    """A tag as it is written: ``!!python/object``, ``!custom``."""
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _key_text(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _names_variables(path: str) -> bool:
    """A mapping whose values name environment variables (``header_env: {Authorization:
    ADMIN_TOKEN}``): a secret-sounding key there holds no secret; its value is still read."""
    return path == "header_env" or path.endswith(".header_env")


def _key_path(path: str, key: str) -> str:
    """The key's path, or the parent's when the key would not read as one token."""
    return _join(path, key) if _KEY_RE.fullmatch(key) else path


def _display(loc: Loc) -> str:
    """``nodes[0].engine.port`` for ("nodes", 0, "engine", "port")."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _KEY_RE.fullmatch(part):
            path = _join(path, part)
        else:
            break
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: float) -> float | None:
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return result if math.isfinite(result) else None


def entries(items: object, key: str) -> list[tuple[int, object]]:
    """(index, value of ``key``) for each entry of a list of mappings (or of records made in
    code): what a model's own checks read from data that may not be valid yet."""
    if not isinstance(items, list | tuple):
        return []
    found = []
    for i, item in enumerate(items):
        found.append((i, item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)))
    return found
