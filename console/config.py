"""Typed configuration records and the YAML loader that fills them.

Every problem in a config file is reported as one line,
``FILE:LINE: key.path: what is wrong (what was expected)``; the loader never lets a
traceback reach the user. Secrets are never read from the file: only the names of
environment variables that hold them.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from console.redact import looks_secret, secret_key_name


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/llmops/config.yaml`` (``~/.config/llmops/config.yaml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmops" / "config.yaml"


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/llmops/llmops.db`` (``~/.local/share/llmops/llmops.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmops" / "llmops.db"


@dataclass(frozen=True)
class SshConfig:
    user: str = "llmops"
    # A factory, so that ~ is expanded when a config is made rather than at import.
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    identity_files: tuple[Path, ...] = ()  # empty: the agent and ssh's default keys
    connect_timeout_s: float = 10.0
    keepalive_s: float = 15.0


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "vllm"
    url: str = ""  # base URL of the engine's HTTP server, e.g. http://10.0.3.11:8000
    service: str = "vllm.service"
    args_file: str = "/etc/vllm/args.yaml"
    restart_command: str = "sudo systemctl restart vllm.service"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    host: str
    port: int = 22
    gpus: int | None = None  # expected GPU count; fewer readings are flagged
    cost_per_hour_usd: float = 0.0
    engine: EngineConfig | None = None
    line: int = 0  # line in the config file, for later error messages


@dataclass(frozen=True)
class ProbeConfig:
    every_s: float = 10.0
    prompt: str = "Reply with the single word: ok"
    max_tokens: int = 16
    timeout_s: float = 30.0


@dataclass(frozen=True)
class PriceConfig:
    input_per_mtok_usd: float = 0.0
    output_per_mtok_usd: float = 0.0


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    kind: str  # openai | anthropic
    base_url: str
    model: str
    nodes: tuple[str, ...] = ()  # self-hosted: the nodes whose engines serve it
    api_key_env: str | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    price: PriceConfig | None = None  # per-token prices for API endpoints
    line: int = 0


@dataclass(frozen=True)
class PollConfig:
    gpus_s: float = 2.0
    engine_s: float = 2.0
    max_backoff_s: float = 60.0
    stale_after_polls: int = 2  # a source is stale after this many missed intervals


@dataclass(frozen=True)
class AlertThresholds:
    p95_latency_s: float = 4.0
    ttft_p95_s: float = 1.5
    error_rate_pct: float = 5.0
    gpu_temp_c: float = 85.0
    kv_cache_pct: float = 90.0


@dataclass(frozen=True)
class Config:
    path: Path
    environment: str
    store: Path
    ssh: SshConfig
    poll: PollConfig
    nodes: tuple[NodeConfig, ...]
    endpoints: tuple[EndpointConfig, ...]
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    store_line: int = 0  # where `store:` is set; 0 when the default path is used

    def node(self, name: str) -> NodeConfig:
        return next(n for n in self.nodes if n.name == name)


class ConfigError(Exception):
    """One or more problems in a config file, each already a formatted one-line message."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- the loader ------------------------------------------------------------------------------

DURATION = "a number of seconds or e.g. 500ms, 15s, 2m, 1h"
MIN_INTERVAL_S = 0.1  # poll and probe intervals
MAX_GPUS_PER_NODE = 64
NAME = "a name of letters, digits, '.', '_' and '-'"
SECRET = (
    "literal secrets are not allowed in the config (name an environment variable with api_key_env)"
)

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_NULL = _TAG + "null"
_PLAIN_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float"))

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_ENV_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
_HOST_RE = re.compile(r"[^\s/]+")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")  # keys that can be written into a key.path as they are

_BAD: Any = object()  # a value whose problem is already reported

Reader = Callable[[Node, str], Any]


@dataclass(frozen=True)
class _Key:
    attr: str  # the record field it fills
    read: Reader
    need: str | None = None  # required: what to expect when it is missing


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem in it."""
    loader = _Loader(path)
    config = loader.load()
    if config is None:
        raise ConfigError(loader.sorted_problems())
    return config


def check_config(path: Path | str) -> list[str]:
    """The problems in a config file, one formatted line each; empty when it is fine."""
    try:
        load_config(path)
    except ConfigError as error:
        return error.problems
    return []


def _show(text: str) -> str:
    """A value quoted for a message: repr keeps it on one line, the cut keeps it short."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag in _PLAIN_TAGS and node.value.isprintable():
        return node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return _show(node.value)


def _foreign_tag(node: Node) -> str | None:
    """An explicit tag outside YAML's own types (!!python/..., !custom), as it was written."""
    if not node.tag.startswith(_TAG):
        return node.tag
    name = node.tag.removeprefix(_TAG)
    return f"!!{name}" if "/" in name else None


def _is_foreign_file(path: Path) -> bool:
    """A file that exists, has content and does not start as every SQLite database does."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:  # absent (the store creates it) or unreadable (opening it says why)
        return False
    return bool(head) and head != b"SQLite format 3\x00"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _empty(node: Node | None) -> bool:
    """Absent, null or an empty list (the raw YAML, so a broken entry still counts)."""
    return node is None or _is_null(node) or (isinstance(node, SequenceNode) and not node.value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: float) -> float | None:
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key_path(path: str, key: str) -> str:
    """The key's path, or the parent's when the key would not read as one token."""
    return _join(path, key) if _KEY_RE.fullmatch(key) else path


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _suggest(word: str, options: Iterable[str]) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(options) if options else "expected none"


def _child(node: MappingNode, key: str) -> Node | None:
    return next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == key), None)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _Loader:
    """One pass over one file: collects problems instead of stopping at the first."""

    def __init__(self, path: Path | str) -> None:
        self.file = str(path)
        self.path = Path(path)
        self.base = self.path.absolute().parent  # relative paths in the file start here
        self.problems: list[tuple[int, str]] = []
        self.secrets: set[int] = set()  # ids of nodes reported as secrets: never checked again
        self.refs: list[tuple[Node, str, str]] = []  # endpoint -> node names, checked at the end
        self.names: dict[str, set[str]] = {}  # "node" -> the names read, even of broken nodes
        self.constructor = SafeConstructor()

    def sorted_problems(self) -> list[str]:
        return [text for _, text in sorted(self.problems, key=lambda p: p[0])]

    def fail(self, where: Node | int, path: str, what: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        what = what.replace("\r", " ").replace("\n", " ")
        self.problems.append((line, f"{self.file}:{line}: {path or '(top)'}: {what}"))

    def bad(self, node: Node, path: str, what: str) -> Any:
        self.fail(node, path, what)
        return _BAD

    def wrong(self, node: Node, path: str, kind: str, expect: str) -> Any:
        if _is_null(node):
            return self.bad(node, path, f"has no value (expected {expect})")
        if tag := _foreign_tag(node):  # the file is only composed, so a tag is never obeyed
            return self.bad(node, path, f"the YAML tag {tag} is not supported (expected {expect})")
        return self.bad(node, path, f"{_describe(node)} is not {kind} (expected {expect})")

    # -- reading the file

    def load(self) -> Config | None:
        root = self.compose()
        if root is None:
            return None
        self.scan_secrets(root)
        return self.config(root)

    def compose(self) -> MappingNode | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.fail(1, "(file)", "no such file (expected a YAML config; see config.example.yaml)")
            return None
        except IsADirectoryError:
            self.fail(1, "(file)", "is a directory (expected a YAML config file)")
            return None
        except OSError as error:
            self.fail(
                1, "(file)", f"cannot be read: {error.strerror or error} (expected a readable file)"
            )
            return None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            self.fail(line, "(file)", "is not UTF-8 text (expected a UTF-8 YAML file)")
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            self.fail_yaml(error)
            return None
        except yaml.reader.ReaderError as error:
            line = text[: error.position].count("\n") + 1
            char = f"#x{error.character:04x}" if isinstance(error.character, int) else "character"
            self.fail(line, "(yaml)", f"unacceptable character {char} (expected printable text)")
            return None
        except yaml.YAMLError as error:
            self.fail(1, "(yaml)", f"{' '.join(str(error).split())} (expected valid YAML)")
            return None
        except RecursionError:
            self.fail(1, "(yaml)", "nested too deeply (expected a config, a few levels deep)")
            return None
        if root is None or _is_null(root):
            self.fail(
                1, "(file)", "is empty (expected a mapping with environment, nodes, endpoints)"
            )
            return None
        if not isinstance(root, MappingNode):
            kind = "a list" if isinstance(root, SequenceNode) else "a single value"
            self.fail(
                root,
                "(top)",
                f"the top level is {kind} (expected a mapping of keys such as "
                "environment, nodes, endpoints)",
            )
            return None
        return root

    def fail_yaml(self, error: yaml.MarkedYAMLError) -> None:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        problem = error.problem or error.context or "invalid YAML"
        # PyYAML's context says what it was reading, or what it expected, and where that began.
        detail = "expected valid YAML"
        if error.context and error.problem and error.context_mark:
            detail = f"{error.context} at line {error.context_mark.line + 1}"
        if "\\t" in problem:
            detail = "expected indentation with spaces, not tabs"
        self.fail(line, "(yaml)", f"{problem} ({detail})")

    def scan_secrets(self, root: Node) -> None:
        """Refuse literal secrets anywhere, known key or not; the schema pass then skips them."""
        seen: set[int] = set()  # aliases share nodes, and may even nest them in themselves
        stack: list[tuple[Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, ScalarNode):
                if looks_secret(node.value):
                    self.secret(node, path)
            elif isinstance(node, SequenceNode):
                stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
            else:
                for key, child in node.value:
                    if not isinstance(key, ScalarNode):
                        stack.append((key, path))
                        stack.append((child, path))
                    elif secret_key_name(key.value):
                        self.secret(key, _key_path(path, key.value))
                        self.secrets.add(id(child))  # the whole value is the secret
                    elif looks_secret(key.value):
                        self.secret(key, path)  # the key is the secret: leave it out of the path
                        stack.append((child, path))
                    else:
                        stack.append((child, _key_path(path, key.value)))

    def secret(self, node: Node, path: str) -> None:
        self.secrets.add(id(node))
        self.fail(node, path, SECRET)

    # -- value readers: each reports its own problems and returns _BAD after one

    def scalar(self, node: Node) -> Any:
        """The Python value of a plain scalar; _BAD for anything else (lists, dates, tags)."""
        if not isinstance(node, ScalarNode):
            return _BAD
        if node.tag == _STR:
            return node.value
        if node.tag in _PLAIN_TAGS:
            try:
                return self.constructor.construct_object(node)
            except (yaml.YAMLError, ValueError, LookupError, ArithmeticError):
                return _BAD  # e.g. an explicit !!int on text that is not one
        return _BAD

    def text(
        self,
        expect: str = "a non-empty string",
        *,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] = (),
        nullable: bool = False,
    ) -> Reader:
        def read(node: Node, path: str) -> Any:
            value = self.scalar(node)
            if value is None and nullable:
                return None
            if not isinstance(value, str):
                # Numbers and booleans are not silently turned into text: quoting is explicit.
                quote = isinstance(node, ScalarNode) and not _is_null(node)
                return self.wrong(node, path, "a string", expect + ("; quote it" if quote else ""))
            if not value.strip():
                return self.bad(node, path, f"is empty (expected {expect})")
            if choices and value not in choices:
                return self.bad(
                    node, path, f"{_show(value)} is not supported ({_suggest(value, choices)})"
                )
            if pattern and not pattern.fullmatch(value):
                return self.bad(node, path, f"{_show(value)} is not valid (expected {expect})")
            return value

        return read

    def integer(self, low: int, high: int | None = None, *, nullable: bool = False) -> Reader:
        expect = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

        def read(node: Node, path: str) -> Any:
            value = self.scalar(node)
            if value is None and nullable:
                return None
            if not isinstance(value, int) or isinstance(value, bool):
                return self.wrong(node, path, "an integer", expect)
            if value < low or (high is not None and value > high):
                return self.bad(
                    node, path, f"{_describe(node)} is out of range (expected {expect})"
                )
            return value

        return read

    def number(self, low: float, high: float | None = None) -> Reader:
        expect = (
            f"a number from {low:g} to {high:g}" if high is not None else f"a number >= {low:g}"
        )

        def read(node: Node, path: str) -> Any:
            value = self.scalar(node)
            if not _is_number(value):
                return self.wrong(node, path, "a number", expect)
            number = _finite(value)
            if number is None or number < low or (high is not None and number > high):
                return self.bad(
                    node, path, f"{_describe(node)} is out of range (expected {expect})"
                )
            return number

        return read

    def duration(self, minimum_s: float = 0.0) -> Reader:
        expect = DURATION if not minimum_s else f"{DURATION}; at least {minimum_s * 1000:g}ms"

        def read(node: Node, path: str) -> Any:
            value = self.scalar(node)
            if isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
                value = float(match[1]) * _UNITS[match[2] or "s"]
            elif not _is_number(value):
                return self.wrong(node, path, "a duration", expect)
            if math.isnan(value):  # e.g. `.nan`
                what = f"{_describe(node)} is not a number"
                return self.bad(node, path, f"{what} (expected {expect})")
            seconds = _finite(value)
            if seconds is None:
                return self.bad(node, path, f"{_describe(node)} is too long (expected {expect})")
            if seconds <= 0:
                return self.bad(
                    node, path, f"{_describe(node)} is not greater than zero (expected {expect})"
                )
            if seconds < minimum_s:
                return self.bad(node, path, f"{_describe(node)} is too short (expected {expect})")
            return seconds

        return read

    def file_path(self) -> Reader:
        text = self.text("a file path")

        def read(node: Node, path: str) -> Any:
            value = text(node, path)
            if value is _BAD:
                return _BAD
            # os.path.expanduser leaves an unknown ~user alone where Path.expanduser raises.
            expanded = os.path.expanduser(value)
            if expanded.startswith("~"):
                return self.bad(
                    node,
                    path,
                    f"{_show(value)} cannot be expanded (expected an "
                    "absolute path, ~/..., or a path relative to the config file)",
                )
            return self.base / expanded

        return read

    def store_path(self) -> Reader:
        file_path = self.file_path()
        expect = "a path for the SQLite incident log"

        def read(node: Node, path: str) -> Any:
            value = file_path(node, path)
            if value is _BAD:
                return _BAD
            # Caught here, so `config check` says so before the console is started on it.
            if value.is_dir():
                return self.bad(node, path, f"{_show(node.value)} is a folder (expected {expect})")
            if _is_foreign_file(value):
                return self.bad(
                    node, path, f"{_show(node.value)} is not a SQLite database (expected {expect})"
                )
            return value

        return read

    def url(self) -> Reader:
        expect = "an http:// or https:// URL, e.g. http://10.0.3.11:8000/v1"
        text = self.text(expect)

        def read(node: Node, path: str) -> Any:
            value = text(node, path)
            if value is _BAD:
                return _BAD
            try:
                parts = urlsplit(value)
                ok = bool(parts.hostname)
                port = parts.port  # ValueError when not a number in 0..65535
            except ValueError:  # e.g. an unclosed [IPv6 address
                ok, port = False, None
            if not ok or not value.startswith(("http://", "https://")) or not value.isprintable():
                return self.bad(node, path, f"{_show(value)} is not a URL (expected {expect})")
            if port == 0:
                return self.bad(node, path, f"{_show(value)} has port 0 (expected 1 to 65535)")
            return value

        return read

    def items(self, item: Reader, expect: str) -> Reader:
        def read(node: Node, path: str) -> Any:
            if _is_null(node):
                return ()
            if not isinstance(node, SequenceNode):
                return self.wrong(node, path, "a list", expect)
            values = []
            for i, child in enumerate(node.value):
                if id(child) not in self.secrets:
                    values.append(item(child, f"{path}[{i}]"))
            return _BAD if _BAD in values or len(values) < len(node.value) else tuple(values)

        return read

    def section(
        self, spec: dict[str, _Key], build: Callable[..., Any], expect: str, default: Any
    ) -> Reader:
        def read(node: Node, path: str) -> Any:
            if _is_null(node):  # `ssh:` with everything under it commented out
                return default
            values = self.keys(node, path, spec, expect)
            return _BAD if values is _BAD else build(**values)

        return read

    def keys(self, node: Node, path: str, spec: dict[str, _Key], expect: str) -> Any:
        """Read a mapping against its spec: {attr: value} for the keys that read well."""
        if not isinstance(node, MappingNode):
            return self.wrong(node, path, "a mapping", expect)
        values: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key, child in node.value:
            if id(key) in self.secrets:
                continue
            if not isinstance(key, ScalarNode):
                self.fail(key, path, f"{_describe(key)} cannot be a key ({_suggest('', spec)})")
                continue
            name = key.value
            kpath = _key_path(path, name)
            named = "" if kpath != path else f" {_show(name)}"
            if name in first:
                self.fail(key, kpath, f"duplicate key{named} (first at line {first[name]})")
                continue
            first[name] = _line(key)
            if name not in spec:
                if key.tag == _TAG + "merge":
                    self.fail(key, path, "merge keys (<<) are not supported (expected plain keys)")
                else:
                    self.fail(key, kpath, f"unknown key{named} ({_suggest(name, spec)})")
                continue
            if id(child) not in self.secrets:
                value = spec[name].read(child, kpath)
                if value is not _BAD:
                    values[spec[name].attr] = value
        for name, entry in spec.items():
            if entry.need and name not in first:
                self.fail(node, _join(path, name), f"missing required key (expected {entry.need})")
        return values

    # -- the schema

    def config(self, root: MappingNode) -> Config | None:
        seconds = self.duration()
        # Faster than this, polling and probing load the fleet (and pay for probes) for nothing.
        interval = self.duration(minimum_s=MIN_INTERVAL_S)
        ssh = {
            "user": _Key("user", self.text("a user name")),
            "known_hosts": _Key("known_hosts", self.file_path()),
            "identity_files": _Key(
                "identity_files", self.items(self.file_path(), "a list of key file paths")
            ),
            "connect_timeout": _Key("connect_timeout_s", seconds),
            "keepalive": _Key("keepalive_s", seconds),
        }
        poll = {
            "gpus": _Key("gpus_s", interval),
            "engine": _Key("engine_s", interval),
            "max_backoff": _Key("max_backoff_s", seconds),
            "stale_after_polls": _Key("stale_after_polls", self.integer(1)),
        }
        alerts = {
            "p95_latency": _Key("p95_latency_s", seconds),
            "ttft_p95": _Key("ttft_p95_s", seconds),
            "error_rate_pct": _Key("error_rate_pct", self.number(0, 100)),
            "gpu_temp_c": _Key("gpu_temp_c", self.number(0, 200)),
            "kv_cache_pct": _Key("kv_cache_pct", self.number(0, 100)),
        }
        spec = {
            "environment": _Key("environment", self.text(), need="a string such as prod"),
            "store": _Key("store", self.store_path()),
            "ssh": _Key(
                "ssh", self.section(ssh, SshConfig, "a mapping of ssh settings", SshConfig())
            ),
            "poll": _Key(
                "poll", self.section(poll, PollConfig, "a mapping of poll intervals", PollConfig())
            ),
            "nodes": _Key(
                "nodes",
                self.nodes,
                need="a list of nodes; nodes: [] when only API endpoints are watched",
            ),
            "endpoints": _Key("endpoints", self.endpoints),
            "alerts": _Key(
                "alerts",
                self.section(
                    alerts, AlertThresholds, "a mapping of alert thresholds", AlertThresholds()
                ),
            ),
        }
        values = self.keys(root, "", spec, "a mapping")
        if "node" in self.names:  # else the nodes list is broken, and says so itself
            self.check_refs(self.names["node"])
        nodes = _child(root, "nodes")
        if nodes is not None and _empty(nodes) and _empty(_child(root, "endpoints")):
            self.fail(root, "nodes", "no nodes and no endpoints (expected at least one to watch)")
        if self.problems:
            return None
        return Config(
            path=self.path,
            environment=values["environment"],
            store=values.get("store", default_store_path()),
            ssh=values.get("ssh", SshConfig()),
            poll=values.get("poll", PollConfig()),
            nodes=values["nodes"],
            endpoints=values.get("endpoints", ()),
            alerts=values.get("alerts", AlertThresholds()),
            store_line=_line(store) if (store := _child(root, "store")) is not None else 0,
        )

    def nodes(self, node: Node, path: str) -> Any:
        engine = {
            "kind": _Key("kind", self.text("an engine kind", choices=("vllm",))),
            "url": _Key("url", self.url()),
            "port": _Key("port", self.integer(1, 65535)),
            "service": _Key("service", self.text("a systemd unit name")),
            "args_file": _Key("args_file", self.text("a path on the node")),
            "restart_command": _Key("restart_command", self.text("a shell command")),
        }
        spec = {
            "name": _Key("name", self.text(NAME, pattern=_NAME_RE), need=NAME),
            "host": _Key(
                "host",
                self.text("a host name or IP address", pattern=_HOST_RE),
                need="a host name or IP address",
            ),
            "port": _Key("port", self.integer(1, 65535)),
            "gpus": _Key("gpus", self.integer(1, MAX_GPUS_PER_NODE, nullable=True)),
            "cost_per_hour_usd": _Key("cost_per_hour_usd", self.number(0)),
            "engine": _Key(
                "engine", self.section(engine, dict, "a mapping of engine settings", None)
            ),
        }
        return self.records(node, path, spec, "node", self.node_record)

    def node_record(self, values: dict[str, Any], line: int) -> NodeConfig:
        engine = values.pop("engine", None)
        if engine is not None:
            # The port only builds the default URL: an explicit url wins.
            port = engine.pop("port", 8000)
            engine.setdefault("url", f"http://{_url_host(values['host'])}:{port}")
            engine = EngineConfig(**engine)
        return NodeConfig(**values, engine=engine, line=line)

    def endpoints(self, node: Node, path: str) -> Any:
        name_text = self.text(NAME, pattern=_NAME_RE)

        def node_ref(item: Node, item_path: str) -> Any:
            value = name_text(item, item_path)
            if value is not _BAD:
                self.refs.append((item, item_path, value))
            return value

        probe = {
            "every": _Key("every_s", self.duration(minimum_s=MIN_INTERVAL_S)),
            "prompt": _Key("prompt", self.text()),
            "max_tokens": _Key("max_tokens", self.integer(1)),
            "timeout": _Key("timeout_s", self.duration()),
        }
        price = {
            "input_per_mtok_usd": _Key("input_per_mtok_usd", self.number(0)),
            "output_per_mtok_usd": _Key("output_per_mtok_usd", self.number(0)),
        }
        spec = {
            "name": _Key("name", name_text, need=NAME),
            "kind": _Key(
                "kind",
                self.text("openai or anthropic", choices=("openai", "anthropic")),
                need="openai or anthropic",
            ),
            "base_url": _Key("base_url", self.url(), need="an http:// or https:// URL"),
            "model": _Key("model", self.text("a model name"), need="a model name"),
            "nodes": _Key("nodes", self.items(node_ref, "a list of node names")),
            "api_key_env": _Key(
                "api_key_env",
                self.text(
                    "an environment variable name such as PRIMARY_API_KEY",
                    pattern=_ENV_RE,
                    nullable=True,
                ),
            ),
            "probe": _Key(
                "probe",
                self.section(probe, ProbeConfig, "a mapping of probe settings", ProbeConfig()),
            ),
            "price": _Key("price", self.section(price, PriceConfig, "a mapping of prices", None)),
        }
        return self.records(
            node, path, spec, "endpoint", lambda values, line: EndpointConfig(**values, line=line)
        )

    def records(
        self,
        node: Node,
        path: str,
        spec: dict[str, _Key],
        what: str,
        build: Callable[[dict[str, Any], int], Any],
    ) -> Any:
        """A list of named records (nodes or endpoints) whose names must be unique."""
        required = ", ".join(k for k, v in spec.items() if v.need)
        expect = f"a list of {what}s, each a mapping with {required}"
        if _is_null(node):
            self.names[what] = set()
            return ()
        if not isinstance(node, SequenceNode):
            return self.wrong(node, path, "a list", expect)
        records = []
        first: dict[str, int] = {}
        for i, item in enumerate(node.value):
            item_path = f"{path}[{i}]"
            if id(item) in self.secrets:
                continue
            values = self.keys(item, item_path, spec, f"a {what}: a mapping with {required}")
            if values is _BAD:
                continue
            name = values.get("name")
            if name in first:
                self.fail(
                    _child(item, "name") or item,
                    f"{item_path}.name",
                    f"duplicate {what} name {_show(name)} (first at line {first[name]}; "
                    "expected unique names)",
                )
            elif name is not None:
                first[name] = _line(item)
            if all(values.get(k) is not None for k, v in spec.items() if v.need):
                records.append(build(values, _line(item)))
        self.names[what] = set(first)
        return tuple(records)

    def check_refs(self, names: set[str]) -> None:
        """Each node an endpoint names must be in the nodes list."""
        for node, path, name in self.refs:
            if name not in names:
                self.fail(
                    node, path, f"unknown node {_show(name)} ({_suggest(name, sorted(names))})"
                )
