"""The config schema, declared once as pydantic models, and the loader that fills it.

The records below are both the schema of config.yaml (keys, types, defaults, what each key
expects) and what the rest of the console reads. console/yamlconf.py turns every problem in a
file into one line, ``FILE:LINE: key.path: what is wrong (expected ...)``; no traceback reaches
the user. Secrets are never read from the file: only the names of environment variables that
hold them. It must not read anything but the config file (the first bytes of the store, to
refuse a file that is not SQLite, and whether an ssh_config it names exists), nor any
environment variable but the XDG folders.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
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

from console.figures import FIGURES
from console.yamlconf import (
    Check,
    DocumentError,
    Duration,
    EnvVarName,
    FilePath,
    HttpUrl,
    Loc,
    boolean,
    duration,
    entries,
    file_path,
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
    where,
)


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/llmops/config.yaml`` (``~/.config/llmops/config.yaml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmops" / "config.yaml"


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/llmops/llmops.db`` (``~/.local/share/llmops/llmops.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmops" / "llmops.db"


# --- field types --------------------------------------------------------------------------------

MIN_INTERVAL_S = 0.1  # poll and probe intervals
MAX_GPUS_PER_NODE = 64
NAME = "a name of letters, digits, '.', '_' and '-'"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_HOST_RE = re.compile(r"[^\s/]+")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _store_path() -> Check:
    """A file path that is, or will become, the SQLite incident log."""
    expect = "a path for the SQLite incident log"
    as_path = file_path(expect).read

    def read(value: Any, info: ValidationInfo) -> Any:
        path = as_path(value, info)
        # Caught here, so `config check` says so before the console is started on it.
        if path.is_dir():
            raise problem(f"{show(str(value))} is a folder (expected {expect})")
        if _is_foreign_file(path):
            raise problem(f"{show(str(value))} is not a SQLite database (expected {expect})")
        return path

    return Check(expect, read)


def _ssh_config_path() -> Check:
    """An OpenSSH client config file that exists; ``none`` (or null): none is read."""
    expect = "an OpenSSH client config file, or none"
    as_path = file_path(expect).read

    def read(value: Any, info: ValidationInfo) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        path = as_path(value, info)
        # Named on purpose, it must be there: a typo would silently drop every Host alias.
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "not found"
            raise problem(f"{show(str(value))} {what} (expected {expect})")
        return path

    return Check(expect, read)


def _is_foreign_file(path: Path) -> bool:
    """A file that exists, has content and does not start as every SQLite database does."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:  # absent (the store creates it) or unreadable (opening it says why)
        return False
    return bool(head) and head != _SQLITE_MAGIC


# Faster than this, polling and probing load the fleet (and pay for probes) for nothing.
Interval = Annotated[float, duration(minimum_s=MIN_INTERVAL_S)]
Port = Annotated[int, integer(1, 65535)]
Name = Annotated[str, text(NAME, pattern=_NAME_RE)]
StorePath = Annotated[Path, _store_path()]
Text = Annotated[str, text()]
UserName = Annotated[str, text("a user name")]
UnitName = Annotated[str, text("a systemd unit name")]
RemotePath = Annotated[str, text("a path on the node")]
ShellCommand = Annotated[str, text("a shell command")]
ModelName = Annotated[str, text("a model name")]
HostName = Annotated[str, text("a host name or IP address", pattern=_HOST_RE)]
# A Prometheus label name (the data model's rule): what identifies a node in the series.
LabelName = Annotated[
    str, text("a Prometheus label name such as node", pattern=re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*"))
]
# An HTTP header name (RFC 9110 token characters).
HeaderName = Annotated[
    str,
    text(
        "an HTTP header name such as Authorization",
        pattern=re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"),
    ),
]
VariableName = Annotated[
    str,
    text(
        "an environment variable name such as PROMETHEUS_TOKEN",
        pattern=re.compile(r"[A-Z_][A-Z0-9_]*"),
    ),
]
KeyPath = Annotated[
    str,
    text(
        "a dotted key path such as model_list or litellm_params.weight",
        pattern=re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*"),
    ),
]


# --- the records --------------------------------------------------------------------------------


class _Record(BaseModel):
    # Files spell the keys (`every: 15s`); code spells the fields (ProbeConfig(every_s=15.0)).
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_alias=True, validate_by_name=True
    )


class SshConfig(_Record):
    """How the console reaches nodes. ``config`` is an OpenSSH client config: a node's host
    may be one of its Host aliases, and what it says for a host (HostName, User, Port,
    IdentityFile, ProxyJump, UserKnownHostsFile, ...) is used where a key below is not set
    in the file; a key set here wins (``model_fields_set`` tells which are set)."""

    model_config = ConfigDict(title="ssh settings")

    # The default is used only when it exists; a file named here must exist.
    config: Annotated[Path | None, _ssh_config_path()] = Field(
        default_factory=lambda: Path("~/.ssh/config").expanduser()
    )
    # Remote user on every node (when neither set here nor by ssh_config: llmops).
    user: UserName = "llmops"
    # A factory, so that ~ is expanded when a config is made rather than at import.
    known_hosts: FilePath = Field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    # Empty: the agent and ssh's default keys.
    identity_files: Annotated[tuple[FilePath, ...], null_means(())] = Field(
        default=(), description="a list of key file paths"
    )
    connect_timeout_s: Duration = Field(default=10.0, validation_alias="connect_timeout")
    keepalive_s: Duration = Field(default=15.0, validation_alias="keepalive")


# Where a node's figures are read: from the node itself, or from the prometheus: server.
GPUS_FROM = ("ssh", "prometheus")
ENGINE_FROM = ("direct", "prometheus")


class EngineConfig(_Record):
    model_config = ConfigDict(title="engine settings")

    kind: Annotated[str, text("an engine kind", choices=("vllm",))] = "vllm"
    # direct: the console scrapes {url}/metrics; prometheus: the same series, from the
    # prometheus: server (health, version and runbooks still use url).
    source: Annotated[str, text("direct or prometheus", choices=ENGINE_FROM)] = Field(
        default="direct", validation_alias="from"
    )
    # Base URL of the engine's HTTP server; when not set, built from the node's host and port.
    url: HttpUrl = ""
    port: Port = 8000
    service: UnitName = "vllm.service"
    args_file: RemotePath = "/etc/vllm/args.yaml"
    restart_command: ShellCommand = "sudo systemctl restart vllm.service"
    # The engine listens on the node's own localhost: the console reaches url (as the node
    # sees it) through a local port forward over the node's SSH connection.
    via_ssh: Annotated[bool, boolean()] = False
    # The model revision this node should run: what a model rollback puts back.
    pinned_revision: Annotated[str | None, text("a model revision", nullable=True)] = None

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        # The console asks for {url}/metrics, /health, /version: a URL ending in one of them
        # would be scraped as /metrics/metrics.
        path = urlsplit(url).path.rstrip("/").lower()
        if path.endswith(("/metrics", "/health", "/version", "/v1")):
            raise problem(
                f"{show(url)} ends in {path.rsplit('/', 1)[1]!r} (expected the engine's base URL, "
                "e.g. http://10.0.3.11:8000)"
            )
        return url


class _Located(_Record):
    """A record whose place in the config file is kept, for later error messages."""

    _line: int = PrivateAttr(0)

    @property
    def line(self) -> int:
        return self._line


class NodeConfig(_Located):
    model_config = ConfigDict(title="node")

    name: Name
    # An address or a Host alias of ssh.config.
    host: HostName
    # When not set: ssh_config's Port for the host, else 22.
    port: Port = 22
    # Expected GPU count; fewer readings are flagged.
    gpus: Annotated[int | None, integer(1, MAX_GPUS_PER_NODE, nullable=True)] = None
    # None: not configured, shown as N/A, never as $0.00.
    cost_per_hour_usd: Annotated[float | None, number(0)] = None
    # ssh: nvidia-smi / NVML over SSH; prometheus: dcgm-exporter's series on the prometheus:
    # server (no SSH session is opened for them).
    gpus_from: Annotated[str, text("ssh or prometheus", choices=GPUS_FROM)] = "ssh"
    engine: EngineConfig | None = None

    @field_validator("engine")
    @classmethod
    def _engine_url(cls, engine: EngineConfig | None, info: ValidationInfo) -> EngineConfig | None:
        """The default URL is built from the node's host and the engine's port."""
        host = info.data.get("host")  # absent when the host itself is wrong
        if engine is None or engine.url or host is None:
            return engine
        if engine.via_ssh:  # the node's own localhost, reached through the forward
            return engine.model_copy(update={"url": f"http://127.0.0.1:{engine.port}"})
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return engine.model_copy(update={"url": f"http://{host}:{engine.port}"})


class PrometheusConfig(_Record):
    """A Prometheus-compatible server (Prometheus, Thanos, Mimir, VictoriaMetrics) that
    scrapes the nodes' engines and dcgm-exporters; nodes choose to be read from it."""

    model_config = ConfigDict(title="prometheus settings")

    # The server's base URL; /api/v1/query is added (Mimir: include its /prometheus prefix).
    url: HttpUrl
    timeout_s: Duration = Field(default=5.0, validation_alias="timeout")
    # The target label whose value is the node's name (see config.example.yaml).
    node_label: LabelName = "node"
    # A node whose latest scrape is older than this fails instead of showing old figures.
    max_age_s: Duration = Field(default=60.0, validation_alias="max_age")
    # Sent as `Authorization: Bearer <value of the variable>`.
    bearer_token_env: EnvVarName = None
    # Header name -> the environment variable holding its value (never the value itself).
    header_env: Annotated[dict[HeaderName, VariableName], null_means({})] = Field(
        default_factory=dict, description="a mapping of header names to environment variable names"
    )

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        path = urlsplit(url).path.rstrip("/").lower()
        if path.endswith(("/api/v1/query", "/api/v1", "/graph")):
            raise problem(
                f"{show(url)} ends in {path.rsplit('/', 1)[1]!r} (expected the server's base URL, "
                "e.g. http://prometheus:9090)"
            )
        return url


class AlertmanagerConfig(_Record):
    """An Alertmanager whose firing alerts the console treats like its own (by label: a node,
    an endpoint, else the fleet) and in which the alert.silence action creates silences."""

    model_config = ConfigDict(title="alertmanager settings")

    # The base URL; /api/v2/alerts and /api/v2/silences are added.
    url: HttpUrl
    timeout_s: Duration = Field(default=5.0, validation_alias="timeout")
    every_s: Interval = Field(default=15.0, validation_alias="every")
    # Labels whose value names a node (its name, or its host with any :port), first match wins.
    node_labels: Annotated[tuple[LabelName, ...], null_means(())] = Field(
        default=("node", "instance", "host", "hostname"), description="a list of label names"
    )
    # The label whose value names an endpoint, for alerts on no node.
    endpoint_label: LabelName = "endpoint"
    # Header name -> the environment variable holding its value (never the value itself).
    header_env: Annotated[dict[HeaderName, VariableName], null_means({})] = Field(
        default_factory=dict, description="a mapping of header names to environment variable names"
    )

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        path = urlsplit(url).path.rstrip("/").lower()
        if path.endswith(("/api/v2", "/api/v2/alerts", "/api/v2/silences", "/api/v1")):
            raise problem(
                f"{show(url)} ends in {path.rsplit('/', 1)[1]!r} (expected the server's base URL, "
                "e.g. http://alertmanager:9093)"
            )
        return url


class ProbeConfig(_Record):
    model_config = ConfigDict(title="probe settings")

    every_s: Interval = Field(default=10.0, validation_alias="every")
    prompt: Text = "Reply with the single word: ok"
    max_tokens: Annotated[int, integer(1)] = 16
    timeout_s: Duration = Field(default=30.0, validation_alias="timeout")


class PriceConfig(_Record):
    model_config = ConfigDict(title="prices")

    input_per_mtok_usd: Annotated[float, number(0)] = 0.0
    output_per_mtok_usd: Annotated[float, number(0)] = 0.0


class EndpointConfig(_Located):
    model_config = ConfigDict(title="endpoint")

    name: Name
    kind: Annotated[str, text("openai or anthropic", choices=("openai", "anthropic"))]
    base_url: HttpUrl
    model: ModelName
    # Self-hosted: the nodes whose engines serve it.
    nodes: Annotated[tuple[Name, ...], null_means(())] = Field(
        default=(), description="a list of node names"
    )
    api_key_env: EnvVarName = None
    probe: Annotated[ProbeConfig, null_means({})] = Field(default_factory=ProbeConfig)
    price: PriceConfig | None = None  # per-token prices for API endpoints


class PollConfig(_Record):
    model_config = ConfigDict(title="poll intervals")

    gpus_s: Interval = Field(default=2.0, validation_alias="gpus")
    engine_s: Interval = Field(default=2.0, validation_alias="engine")
    max_backoff_s: Duration = Field(default=60.0, validation_alias="max_backoff")
    # A source is stale after this many missed intervals.
    stale_after_polls: Annotated[int, integer(1, 1000)] = 2


SEVERITIES = ("page", "ticket", "info")
# Subjects a rule may name, besides the figures' own (FIGURES): a source that answers no more.
STALE = "stale"
SUBJECT_KINDS = ("node", "endpoint", "upstream")
EVERY = "*"  # a rule for every subject of its kind


class AlertRule(_Located):
    """A condition on a figure the console computes, held for ``for`` before it fires; it
    resolves once the condition has not held for ``resolve_after`` (hysteresis: a flapping
    figure does not fire again each time). ``stale`` fires while a subject's sources are stale.
    The checks across keys (figure, subject, bound) are in :func:`_rule_problems`."""

    model_config = ConfigDict(title="alert rule")

    name: Name
    figure: Annotated[str, text("a figure name")]
    # One of these: the subject's name, or "*" for every one of that kind.
    node: Annotated[str | None, text("a node name or *", nullable=True)] = None
    endpoint: Annotated[str | None, text("an endpoint name or *", nullable=True)] = None
    upstream: Annotated[str | None, text("an upstream name or *", nullable=True)] = None
    # One of these, for a figure (latency figures take durations: 150ms).
    above: float | str | None = None
    below: float | str | None = None
    for_s: Duration = Field(default=60.0, validation_alias="for")
    # Default: the greater of `for` and a minute.
    resolve_after_s: Annotated[float | None, duration()] = Field(
        default=None, validation_alias="resolve_after"
    )
    # The span the figure is read over; default: the console's window (a minute).
    window_s: Annotated[float | None, duration(1.0)] = Field(
        default=None, validation_alias="window"
    )
    severity: Annotated[str, text("page, ticket or info", choices=SEVERITIES)] = "ticket"
    runbook: Annotated[str | None, text("a runbook id", nullable=True)] = None
    labels: Annotated[dict[Name, Text], null_means({})] = Field(
        default_factory=dict, description="a mapping of label names to strings"
    )

    @property
    def subject_kind(self) -> str:
        return next(k for k in SUBJECT_KINDS if getattr(self, k) is not None)

    @property
    def subject(self) -> str:
        return str(getattr(self, self.subject_kind))

    @property
    def bound(self) -> tuple[str, float] | None:
        """("above" or "below", the limit in the figure's unit); None for ``stale``."""
        for side in ("above", "below"):
            value = getattr(self, side)
            if value is not None:
                return side, _bound_value(value)
        return None

    @property
    def resolve_delay_s(self) -> float:
        return self.resolve_after_s if self.resolve_after_s is not None else max(self.for_s, 60.0)


def _bound_value(value: float | str) -> float:
    """A rule's limit: a number, or a duration in seconds (checked in _rule_problems)."""
    if isinstance(value, int | float):
        return float(value)
    seconds = parse_duration(value)
    assert seconds is not None
    return seconds


class AlertThresholds(_Record):
    model_config = ConfigDict(title="alert thresholds")

    p95_latency_s: Duration = Field(default=4.0, validation_alias="p95_latency")
    ttft_p95_s: Duration = Field(default=1.5, validation_alias="ttft_p95")
    error_rate_pct: Annotated[float, number(0, 100)] = 5.0
    gpu_temp_c: Annotated[float, number(0, 200)] = 85.0
    kv_cache_pct: Annotated[float, number(0, 100)] = 90.0
    # The thresholds above are rules too (console/alerts.py BUILTIN_RULES), unless false.
    threshold_rules: Annotated[bool, boolean()] = True
    # A new incident rings the terminal bell once in the TUI (besides its toast); `--quiet`
    # silences it for one session.
    bell: Annotated[bool, boolean()] = True
    rules: Annotated[tuple[AlertRule, ...], null_means(())] = Field(
        default=(), description="a list of alert rules"
    )


class UpstreamFigures(_Record):
    """Where the console reads one upstream's figures: a node's engine, or an endpoint."""

    model_config = ConfigDict(title="upstream")

    node: Annotated[str | None, text(NAME, pattern=_NAME_RE, nullable=True)] = None
    endpoint: Annotated[str | None, text(NAME, pattern=_NAME_RE, nullable=True)] = None
    # A standby (a second provider): failover moves traffic to it, failback away from it.
    backup: Annotated[bool, boolean()] = False

    @model_validator(mode="after")
    def _one_source(self) -> UpstreamFigures:
        if (self.node is None) == (self.endpoint is None):
            raise problem("give one of node or endpoint (where the upstream's figures come from)")
        return self


class RouterConfig(_Located):
    """A gateway whose configuration file holds the traffic weights of its upstreams.

    The weights live in a list found at ``list_path`` (dotted keys; a number is a list index);
    each entry is named by the value at ``name_key`` and weighted by the one at ``weight_key``.
    A LiteLLM proxy: list_path ``model_list``, name_key ``model_info.id``, weight_key
    ``litellm_params.weight``.
    """

    model_config = ConfigDict(title="router")

    name: Name
    host: HostName
    port: Port = 22
    file: RemotePath
    format: Annotated[str, text("yaml or json", choices=("yaml", "json"))] = "yaml"
    list_path: KeyPath
    name_key: KeyPath = "name"
    weight_key: KeyPath = "weight"
    # What groups entries into routes (one model name each): a route may never lose all its
    # weight, and weights move only within one. LiteLLM: model_name. Unset: one route.
    route_key: KeyPath | None = None
    reload_command: ShellCommand
    # The upstreams runbooks may move traffic between, each with where its figures come from.
    upstreams: Annotated[dict[Name, UpstreamFigures], null_means({})] = Field(
        default_factory=dict,
        description="a mapping of upstream names to {node: ...} or {endpoint: ...}",
    )
    # The console endpoint whose probes go through the router (the gateway's own figures).
    endpoint: Annotated[str | None, text(NAME, pattern=_NAME_RE, nullable=True)] = None


class Config(_Record):
    model_config = ConfigDict(title="config")

    environment: Text = Field(description="a string such as prod")
    # Environments in which a mutating step is confirmed by typing its target's name.
    protected_environments: Annotated[tuple[Name, ...], null_means(())] = Field(
        default=("prod",), description="a list of environment names"
    )
    # No mutating action runs at all (checks still do); `--read-only` does the same.
    read_only: Annotated[bool, boolean()] = False
    # Folders of runbooks besides the shipped ones (a runbook here replaces a shipped one).
    runbooks: Annotated[tuple[FilePath, ...], null_means(())] = Field(
        default=(), description="a list of folders of runbook YAML files"
    )
    store: StorePath = Field(default_factory=default_store_path)
    ssh: Annotated[SshConfig, null_means({})] = Field(default_factory=SshConfig)
    poll: Annotated[PollConfig, null_means({})] = Field(default_factory=PollConfig)
    nodes: Annotated[tuple[NodeConfig, ...], null_means(())] = Field(
        description="a list of nodes; nodes: [] when only API endpoints are watched"
    )
    endpoints: Annotated[tuple[EndpointConfig, ...], null_means(())] = ()
    alerts: Annotated[AlertThresholds, null_means({})] = Field(default_factory=AlertThresholds)
    routers: Annotated[tuple[RouterConfig, ...], null_means(())] = ()
    # Needed by nodes with gpus_from: prometheus or engine: {from: prometheus}.
    prometheus: PrometheusConfig | None = None
    # Its firing alerts are read as the console's own; alert.silence silences there.
    alertmanager: AlertmanagerConfig | None = None
    _path: Path = PrivateAttr(default_factory=Path)
    _store_line: int = PrivateAttr(0)

    @property
    def path(self) -> Path:
        """The file the config was read from."""
        return self._path

    @property
    def store_line(self) -> int:
        """Where `store:` is set; 0 when the default path is used."""
        return self._store_line

    def node(self, name: str) -> NodeConfig:
        return next(n for n in self.nodes if n.name == name)

    def endpoint(self, name: str) -> EndpointConfig:
        return next(e for e in self.endpoints if e.name == name)

    def router(self, name: str) -> RouterConfig:
        return next(r for r in self.routers if r.name == name)

    @property
    def protected(self) -> bool:
        """Whether mutating steps are confirmed by typing the target's name."""
        return self.environment in self.protected_environments

    def upstream_router(self, upstream: str) -> RouterConfig | None:
        return next((r for r in self.routers if upstream in r.upstreams), None)

    @model_validator(mode="wrap")
    @classmethod
    def _checked(
        cls, data: Any, handler: ModelWrapValidatorHandler[Config], info: ValidationInfo
    ) -> Config:
        """The checks across fields, reported with the field errors (not only when none)."""
        problems = _cross_field_problems(data, info) if isinstance(data, dict) else []
        try:
            config = handler(data)
        except ValidationError as error:
            raise_all(error, problems, cls.__name__)
        if problems:
            raise_all(None, problems, cls.__name__)
        _locate(config, info)
        return config


class ConfigError(DocumentError):
    """One or more problems in a config file, each already a formatted one-line message."""


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem in it."""
    try:
        return load_document(
            path,
            Config,
            example="config.example.yaml",
            secret_hint="name an environment variable with api_key_env",
        )
    except DocumentError as error:
        raise ConfigError(error.problems) from None


def check_config(path: Path | str) -> list[str]:
    """The problems in a config file, one formatted line each; empty when it is fine."""
    try:
        load_config(path)
    except ConfigError as error:
        return error.problems
    return []


# --- checks across fields -----------------------------------------------------------------------

Problems = list[tuple[Loc, object, PydanticCustomError]]


def _cross_field_problems(data: dict[str, Any], info: ValidationInfo) -> Problems:
    """Unique names, endpoint -> node references, something to watch: read from the raw data,
    so that they are reported even where a record has problems of its own."""
    nodes, endpoints = data.get("nodes"), data.get("endpoints")
    found = _duplicates(nodes, "nodes", "node", info)
    found += _duplicates(endpoints, "endpoints", "endpoint", info)
    if isinstance(nodes, list | tuple):  # else the nodes list is broken, and says so itself
        known = sorted({name for _, name in entries(nodes, "name") if isinstance(name, str)})
        found += _unknown_nodes(known, endpoints)
    found += _duplicates(data.get("routers"), "routers", "router", info)
    found += _router_references(data)
    found += _rule_problems(data, info)
    if data.get("prometheus") is None:
        found += _prometheus_readers(nodes)
    if "nodes" in data and not nodes and not endpoints:
        what = "no nodes and no endpoints (expected at least one to watch)"
        found.append((("nodes",), nodes, key_problem(what)))
    return found


def _duplicates(items: object, key: str, what: str, info: ValidationInfo) -> Problems:
    found: Problems = []
    first: dict[str, int] = {}
    for i, name in entries(items, "name"):
        if not isinstance(name, str):
            continue
        if name in first:
            at = where(info, (key, first[name]))
            message = f"duplicate {what} name {show(name)} (first at {at}; expected unique names)"
            found.append(((key, i, "name"), name, problem(message)))
        else:
            first[name] = i
    return found


def _rule_problems(data: dict[str, Any], info: ValidationInfo) -> Problems:
    """Each alert rule: a known figure, one subject the figure exists for (a known one, or
    *), one bound of the figure's unit (none for stale), and a name of its own."""
    alerts = data.get("alerts")
    rules = alerts.get("rules") if isinstance(alerts, dict) else None
    if not isinstance(rules, list | tuple):
        return []
    found: Problems = []
    known = {
        "node": _names(data.get("nodes")),
        "endpoint": _names(data.get("endpoints")),
        "upstream": sorted(
            str(u)
            for r in data.get("routers") or ()
            if isinstance(r, dict) and isinstance(r.get("upstreams"), dict)
            for u in r["upstreams"]
        ),
    }
    first: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        at = ("alerts", "rules", i)
        name = rule.get("name")
        if isinstance(name, str) and name in first:
            where_first = where(info, ("alerts", "rules", first[name]))
            what = f"duplicate rule name {show(name)} (first at {where_first}; expected unique)"
            found.append(((*at, "name"), name, problem(what)))
        elif isinstance(name, str):
            first[name] = i
        figure = rule.get("figure")
        choices = [*sorted(FIGURES), STALE]
        if not isinstance(figure, str) or figure not in choices:
            if isinstance(figure, str):
                what = f"unknown figure {show(figure)} ({suggest(figure, choices)})"
                found.append(((*at, "figure"), figure, problem(what)))
            continue
        kinds = [k for k in SUBJECT_KINDS if rule.get(k) is not None]
        allowed = FIGURES[figure][0] if figure in FIGURES else frozenset({"node", "endpoint"})
        if len(kinds) != 1:
            what = f"give one of {', '.join(sorted(allowed))} (the rule's subject, or *)"
            key = kinds[1] if len(kinds) > 1 else "figure"
            found.append(((*at, key), rule.get(key), key_problem(what)))
        else:
            kind = kinds[0]
            subject = rule[kind]
            if kind not in allowed:
                of = ", ".join(sorted(allowed))
                article = "an" if kind[0] in "aeiou" else "a"
                what = f"{figure} is not a figure of {article} {kind} (it is one of {of})"
                found.append(((*at, kind), subject, key_problem(what)))
            elif isinstance(subject, str) and subject != EVERY and subject not in known[kind]:
                hint = suggest(subject, known[kind])
                what = f"unknown {kind} {show(subject)} ({hint}; * is every {kind})"
                found.append(((*at, kind), subject, problem(what)))
        found += _bound_problems(rule, at, figure)
    return found


def _bound_problems(rule: dict[str, Any], at: Loc, figure: str) -> Problems:
    sides = [s for s in ("above", "below") if rule.get(s) is not None]
    if figure == STALE:
        return [
            ((*at, s), rule[s], key_problem("stale takes no bound (it fires while stale)"))
            for s in sides
        ]
    if len(sides) != 1:
        what = "give one of above or below (the figure's limit)"
        key = sides[1] if sides else "figure"
        return [((*at, key), rule.get(key), key_problem(what))]
    side = sides[0]
    value = rule[side]
    seconds = FIGURES[figure][1] == "s"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        ok = False
    elif isinstance(value, str):
        ok = seconds and parse_duration(value) is not None
    else:
        ok = math.isfinite(value)
    if ok:
        return []
    expected = "a number of seconds or a duration such as 150ms" if seconds else "a number"
    return [((*at, side), value, problem(f"{show(value)} is not {expected}"))]


def _names(items: object) -> list[str]:
    return sorted({n for _, n in entries(items, "name") if isinstance(n, str)})


def _router_references(data: dict[str, Any]) -> Problems:
    """Each router's upstreams read figures from a known node or endpoint, and an upstream
    name means one thing across routers (runbooks name upstreams, not routers)."""
    found: Problems = []
    known = {"node": _names(data.get("nodes")), "endpoint": _names(data.get("endpoints"))}
    seen: dict[str, str] = {}
    routers = data.get("routers")
    for i, router in enumerate(routers if isinstance(routers, list | tuple) else ()):
        if not isinstance(router, dict):
            continue
        endpoint = router.get("endpoint")
        if (
            isinstance(endpoint, str)
            and _NAME_RE.fullmatch(endpoint)
            and endpoint not in known["endpoint"]
        ):
            what = f"unknown endpoint {show(endpoint)} ({suggest(endpoint, known['endpoint'])})"
            found.append((("routers", i, "endpoint"), endpoint, problem(what)))
        upstreams = router.get("upstreams")
        for name, figures in upstreams.items() if isinstance(upstreams, dict) else ():
            if isinstance(name, str) and name in seen:
                what = (
                    f"upstream {show(name)} is also in router {show(seen[name])} "
                    "(expected unique upstream names)"
                )
                found.append((("routers", i, "upstreams", name), name, key_problem(what)))
            seen.setdefault(str(name), str(router.get("name")))
            for kind in ("node", "endpoint"):
                ref = figures.get(kind) if isinstance(figures, dict) else None
                if isinstance(ref, str) and _NAME_RE.fullmatch(ref) and ref not in known[kind]:
                    what = f"unknown {kind} {show(ref)} ({suggest(ref, known[kind])})"
                    found.append((("routers", i, "upstreams", name, kind), ref, problem(what)))
    return found


def _prometheus_readers(nodes: object) -> Problems:
    """Nodes set to read from Prometheus in a config without a prometheus: section."""
    found: Problems = []
    what = (
        "reads from Prometheus, but the config has no prometheus: section "
        "(expected prometheus: {url: ...})"
    )
    for i, node in enumerate(nodes if isinstance(nodes, list | tuple) else ()):
        if not isinstance(node, dict):
            continue
        if node.get("gpus_from") == "prometheus":
            found.append((("nodes", i, "gpus_from"), "prometheus", problem(what)))
        engine = node.get("engine")
        if isinstance(engine, dict) and engine.get("from") == "prometheus":
            found.append((("nodes", i, "engine", "from"), "prometheus", problem(what)))
    return found


def _unknown_nodes(known: list[str], endpoints: object) -> Problems:
    found: Problems = []
    for i, refs in entries(endpoints, "nodes"):
        seen: set[str] = set()
        for j, ref in enumerate(refs if isinstance(refs, list | tuple) else ()):
            # A ref that is not a name at all is reported by its own field.
            if not isinstance(ref, str) or not _NAME_RE.fullmatch(ref):
                continue
            if ref not in known:
                what = f"unknown node {show(ref)} ({suggest(ref, known)})"
                found.append((("endpoints", i, "nodes", j), ref, problem(what)))
            elif ref in seen:  # counted twice, it would double the endpoint's rate and cost
                what = f"node {show(ref)} is listed twice (expected each node once)"
                found.append((("endpoints", i, "nodes", j), ref, problem(what)))
            seen.add(ref)
    return found


def _locate(config: Config, info: ValidationInfo) -> None:
    """Record where the config and its records are written, for later error messages."""
    document = info.context
    config._path = getattr(document, "path", Path())
    config._store_line = line_at(info, ("store",))
    records: tuple[tuple[str, tuple[_Located, ...]], ...] = (
        ("nodes", config.nodes),
        ("endpoints", config.endpoints),
        ("routers", config.routers),
    )
    for key, located in records:
        for i, record in enumerate(located):
            record._line = line_at(info, (key, i))
