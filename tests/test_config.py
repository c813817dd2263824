"""The config loader: the example, defaults, paths, secrets, and a corpus of broken files."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.cli import main
from console.config import (
    AlertThresholds,
    Config,
    ConfigError,
    EngineConfig,
    PollConfig,
    PriceConfig,
    ProbeConfig,
    PrometheusConfig,
    SshConfig,
    check_config,
    default_store_path,
    load_config,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
BROKEN = sorted((Path(__file__).parent / "configs").glob("*.yaml"))

MINIMAL = """\
environment: staging
nodes:
  - name: gpu-a1
    host: 10.0.3.11
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == check_config(path)
    return caught.value.problems


def assert_well_formed(path: Path, found: list[str]) -> None:
    """Every problem is one `FILE:LINE: key.path: message` line, and no traceback leaks."""
    assert found
    line = re.compile(rf"^{re.escape(str(path))}:\d+: \S+: .+$")
    for problem in found:
        assert "\n" not in problem and "\r" not in problem
        assert line.match(problem), problem
        assert "Traceback" not in problem


# --- the example ------------------------------------------------------------------------------


def test_example_loads_into_the_expected_records() -> None:
    config = load_config(EXAMPLE)
    assert check_config(EXAMPLE) == []
    assert config.path == EXAMPLE
    assert config.environment == "prod"
    assert config.store == Path("~/.local/share/llmops/llmops.db").expanduser()
    assert config.ssh == SshConfig(
        user="llmops",
        known_hosts=Path("~/.ssh/known_hosts").expanduser(),
        identity_files=(Path("~/.ssh/id_ed25519").expanduser(),),
        connect_timeout_s=10.0,
        keepalive_s=15.0,
    )
    assert config.poll == PollConfig(gpus_s=2.0, engine_s=2.0, max_backoff_s=60.0)
    assert config.alerts.model_copy(update={"rules": ()}) == AlertThresholds()
    itl, gone = config.alerts.rules
    assert (itl.name, itl.figure, itl.subject_kind, itl.subject) == (
        "itl-high",
        "itl_p95",
        "node",
        "*",
    )
    assert (itl.bound, itl.for_s, itl.window_s, itl.resolve_delay_s) == (
        ("above", 0.15),
        120,
        60,
        120,
    )
    assert (itl.severity, itl.runbook, itl.labels) == ("page", "latency-spike", {"team": "serving"})
    assert (gone.figure, gone.bound, gone.for_s, gone.resolve_delay_s) == ("stale", None, 30, 60)

    assert [n.name for n in config.nodes] == ["gpu-a1", "gpu-a2"]
    a1, a2 = config.nodes
    assert (a1.host, a1.port, a1.gpus, a1.cost_per_hour_usd) == ("10.0.3.11", 22, 8, 9.80)
    assert a1.engine == EngineConfig(
        kind="vllm",
        url="http://10.0.3.11:8000",
        pinned_revision="0e9e39f249a16976918f6564b8830bc894c89659",
    )
    assert a2.engine is not None and a2.engine.url == "http://10.0.3.12:8000"
    lines = EXAMPLE.read_text().splitlines()
    assert lines[a1.line - 1].startswith("  - name: gpu-a1")
    assert lines[a2.line - 1].startswith("  - name: gpu-a2")
    assert config.node("gpu-a2") is a2

    primary, backup, gateway = config.endpoints
    assert primary.name == "chat-primary" and primary.kind == "openai"
    assert primary.base_url == "http://10.0.3.11:8000/v1"
    assert primary.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert primary.nodes == ("gpu-a1", "gpu-a2")
    assert primary.api_key_env is None and primary.price is None
    assert primary.probe == ProbeConfig()
    assert lines[primary.line - 1].startswith("  - name: chat-primary")

    assert backup.name == "chat-backup" and backup.kind == "anthropic"
    assert backup.nodes == ()
    assert backup.api_key_env == "BACKUP_API_KEY"
    assert backup.price == PriceConfig(input_per_mtok_usd=0.80, output_per_mtok_usd=4.00)
    assert backup.probe == ProbeConfig(every_s=30.0, max_tokens=8)

    (router,) = config.routers
    assert router.name == "gw-1" and router.endpoint == gateway.name == "chat-gateway"
    assert (router.list_path, router.name_key, router.weight_key) == (
        "model_list",
        "model_info.id",
        "litellm_params.weight",
    )
    assert {n: u.node or u.endpoint for n, u in router.upstreams.items()} == {
        "gpu-a1": "gpu-a1",
        "gpu-a2": "gpu-a2",
        "backup": "chat-backup",
    }
    assert config.protected and not config.read_only


def test_the_example_documents_the_prometheus_section() -> None:
    config = load_config(EXAMPLE)
    assert config.prometheus == PrometheusConfig(url="http://prometheus.internal:9090")
    # Its nodes keep today's sources: nothing is read from Prometheus unless a node says so.
    assert {(n.gpus_from, n.engine.source if n.engine else None) for n in config.nodes} == {
        ("ssh", "direct")
    }


def test_nodes_choose_where_their_figures_come_from(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        environment: dev
        prometheus:
          url: https://mimir.example/prometheus
          timeout: 2s
          max_age: 45s
          node_label: instance_name
          bearer_token_env: PROMETHEUS_TOKEN
          header_env: {X-Scope-OrgID: MIMIR_TENANT, Authorization: PROM_AUTH}
        nodes:
          - {name: a, host: 10.0.3.11, gpus_from: prometheus, engine: {from: prometheus}}
          - {name: b, host: 10.0.3.12, gpus_from: prometheus, engine: {}}
          - {name: c, host: 10.0.3.13, engine: {from: direct}}
        """,
    )
    config = load_config(path)
    assert config.prometheus == PrometheusConfig(
        url="https://mimir.example/prometheus",
        timeout_s=2.0,
        max_age_s=45.0,
        node_label="instance_name",
        bearer_token_env="PROMETHEUS_TOKEN",
        # Names of variables, not values: a secret-sounding header name is fine here.
        header_env={"X-Scope-OrgID": "MIMIR_TENANT", "Authorization": "PROM_AUTH"},
    )
    a, b, c = config.nodes
    assert (a.gpus_from, a.engine and a.engine.source) == ("prometheus", "prometheus")
    assert (b.gpus_from, b.engine and b.engine.source) == ("prometheus", "direct")
    assert (c.gpus_from, c.engine and c.engine.source) == ("ssh", "direct")


def test_a_prometheus_header_value_is_never_written_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        environment: dev
        prometheus:
          url: http://prom:9090
          header_env: {Authorization: "Bearer eyJhbGciOiJIUzI1NiJ9abcdef0123456789"}
        nodes: [{name: a, host: 10.0.3.11}]
        """,
    )
    found = problems(path)
    assert_well_formed(path, found)
    assert all("eyJhbGci" not in p for p in found)
    assert any(p.startswith(f"{path}:4: prometheus.header_env.Authorization: ") for p in found)


def test_loading_does_not_read_the_api_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKUP_API_KEY", raising=False)
    assert load_config(EXAMPLE).endpoints[1].api_key_env == "BACKUP_API_KEY"


# --- defaults, durations and paths ------------------------------------------------------------


def test_a_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config, Config)
    assert config.environment == "staging"
    assert config.store == default_store_path()
    assert config.ssh == SshConfig()
    assert config.poll == PollConfig()
    assert config.alerts == AlertThresholds()
    assert config.endpoints == ()
    (node,) = config.nodes
    assert (node.port, node.gpus, node.cost_per_hour_usd, node.engine) == (22, None, None, None)
    assert node.line == 3


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "ssh:\npoll:\nalerts:\nendpoints:\n")
    config = load_config(path)
    assert (config.ssh, config.poll, config.alerts) == (
        SshConfig(),
        PollConfig(),
        AlertThresholds(),
    )
    assert config.endpoints == ()


def test_engine_url_is_built_from_host_and_engine_port(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        environment: dev
        nodes:
          - {name: a, host: 10.0.3.11, engine: {}}
          - {name: b, host: gpu-b.internal, engine: {port: 9000}}
          - {name: c, host: "fd00::3", engine: {port: 8001}}
          - {name: d, host: 10.0.3.14, engine: {port: 9000, url: "https://d.example/engine"}}
        """,
    )
    urls = [n.engine.url for n in load_config(path).nodes if n.engine]
    assert urls == [
        "http://10.0.3.11:8000",
        "http://gpu-b.internal:9000",
        "http://[fd00::3]:8001",
        "https://d.example/engine",
    ]
    assert load_config(path).nodes[0].engine == EngineConfig(url="http://10.0.3.11:8000")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("15s", 15.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        ("0.5", 0.5),
        ("'7'", 7.0),
        (".5s", 0.5),
    ],
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    config = load_config(write(tmp_path, MINIMAL + f"poll: {{gpus: {text}}}\n"))
    assert config.poll.gpus_s == seconds


def test_relative_paths_are_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "etc" / "llmops"
    folder.mkdir(parents=True)
    path = write(
        folder,
        MINIMAL
        + textwrap.dedent(
            """\
        store: data/llmops.db
        ssh:
          known_hosts: ../known_hosts
          identity_files: [~/.ssh/id_ed25519, /keys/ops, keys/local]
        """
        ),
    )
    monkeypatch.chdir(tmp_path)  # and not relative to the working directory
    config = load_config(os.path.relpath(path))
    assert config.store == folder / "data" / "llmops.db"
    assert config.store_line == 5  # for `store: cannot open ...` at startup
    assert config.ssh.known_hosts == folder / ".." / "known_hosts"
    assert config.ssh.identity_files == (
        tmp_path / "home" / ".ssh" / "id_ed25519",
        Path("/keys/ops"),
        folder / "keys" / "local",
    )


def test_an_api_only_config_needs_no_nodes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        environment: prod
        nodes: []
        endpoints:
          - name: api
            kind: openai
            base_url: https://api.openai.com/v1
            model: gpt-4o-mini-realtime-preview-2024-12-17
            api_key_env: OPENAI_API_KEY
        """,
    )
    assert [e.name for e in load_config(path).endpoints] == ["api"]


@pytest.mark.parametrize(
    "model",
    [
        "meta-llama/Llama-3.1-8B-Instruct@5206a32e0bd3067aef1ce90f5528ade7d866253f",
        "Mistral-Nemo-Instruct-2407-FP8-dynamic-with-a-long-suffix",
        "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4",
        "123e4567-e89b-12d3-a456-426614174000",
        "claude-3-5-haiku-20241022",
    ],
)
def test_model_names_are_not_mistaken_for_secrets(tmp_path: Path, model: str) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + "endpoints:\n"
        + f'  - {{name: e, kind: openai, base_url: "http://h:8000/v1", model: "{model}"}}\n',
    )
    assert load_config(path).endpoints[0].model == model


def test_keys_are_spelled_as_documented_not_as_the_fields(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "poll: {gpus_s: 5}\n")
    assert problems(path) == [f"{path}:5: poll.gpus_s: unknown key (did you mean 'gpus'?)"]


# --- the broken corpus ------------------------------------------------------------------------


def expectation(path: Path) -> tuple[str, int | None]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# expect: "), f"{path.name} has no '# expect:' line"
    line = None
    if len(lines) > 1 and lines[1].startswith("# line: "):
        line = int(lines[1].removeprefix("# line: "))
    return lines[0].removeprefix("# expect: "), line


def test_the_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fragment, line = expectation(path)
    found = problems(path)
    assert_well_formed(path, found)
    prefix = f"{path}:{line}: " if line else f"{path}:"
    assert any(p.startswith(prefix) and fragment in p for p in found), found
    # What the engineer sees: the same lines on stderr, nothing on stdout, exit status 2.
    # (main() would also take over SIGHUP/SIGTERM, which belong to pytest here.)
    monkeypatch.setattr("console.cli.signal.signal", lambda signum, handler: None)
    with pytest.raises(SystemExit) as exited:
        main(["config", "check", str(path)])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == found


def test_all_problems_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        environment: prod
        poll: {gpus: fast}
        nodes:
          - name: gpu-a1
            host: 10.0.3.11
            prot: 22
          - name: gpu-a1
        endpoints:
          - name: chat
            kind: openia
            base_url: http://10.0.3.11:8000/v1
            model: m
            nodes: [gpu-a2]
        alerts: {kv_cache_pct: 101}
        """,
    )
    found = problems(path)
    assert_well_formed(path, found)
    assert [int(p.split(":")[1]) for p in found] == [2, 6, 7, 7, 10, 13, 14]
    assert "nodes[1].host: missing required key" in found[2]
    assert "nodes[1].name: duplicate node name 'gpu-a1'" in found[3]
    assert "endpoints[0].nodes[0]: unknown node 'gpu-a2' (did you mean 'gpu-a1'?)" in found[5]


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe",
        "Bearer eyJhbGciOiJIUzI1NiJ9",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
@pytest.mark.parametrize(
    "place",
    [
        "endpoints[0].model",
        "endpoints[0].api_key_env",
        "endpoints[0].nodes[0]",
        "endpoints[0].probe.prompt",
        "endpoints[0].extra",
        "endpoints[0].api_key",
        "nodes[0].host",
        "alerts",
    ],
)
def test_a_secret_is_refused_and_never_echoed(tmp_path: Path, secret: str, place: str) -> None:
    endpoint = {"name": "e", "kind": "openai", "base_url": "https://x.example/v1", "model": "m"}
    node = {"name": "n", "host": "h"}
    doc = {"environment": "prod", "nodes": [node], "endpoints": [endpoint]}
    match place:
        case "endpoints[0].model" | "endpoints[0].api_key_env" | "endpoints[0].extra":
            endpoint[place.split(".")[1]] = secret
        case "endpoints[0].api_key":
            endpoint["api_key"] = {"value": secret}
        case "endpoints[0].nodes[0]":
            endpoint["nodes"] = [secret]
        case "endpoints[0].probe.prompt":
            endpoint["probe"] = {"prompt": f"say {secret} back"}
        case "nodes[0].host":
            node["host"] = secret
        case "alerts":
            doc["alerts"] = {secret: 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    found = problems(path)
    assert_well_formed(path, found)
    assert any(f": {place}: literal secrets are not allowed" in p for p in found), found
    text = "\n".join(found)
    assert secret not in text
    assert secret.split()[-1][:12] not in text  # not even a prefix of it


# --- the file itself --------------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert check_config(path) == [
        f"{path}:1: (file): no such file (expected a YAML config; see config.example.yaml)"
    ]


def test_a_directory(tmp_path: Path) -> None:
    found = problems(tmp_path)
    assert_well_formed(tmp_path, found)
    assert "is a directory" in found[0]


def test_an_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)

    # chmod 0 cannot stop root (CI runs as root), so the refusal is made by the OS call itself.
    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    found = problems(path)
    assert_well_formed(path, found)
    assert "cannot be read" in found[0]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"environment: prod\nnodes: []\nname: caf\xe9\n")
    found = problems(path)
    assert found == [f"{path}:3: (file): is not UTF-8 text (expected a UTF-8 YAML file)"]


def test_a_control_character(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("environment: prod\nnodes: []\nx: a\x07b\n", encoding="utf-8")
    found = problems(path)
    assert found == [f"{path}:3: (yaml): unacceptable character #x0007 (expected printable text)"]


def test_deep_nesting_and_self_referencing_aliases(tmp_path: Path) -> None:
    deep = write(tmp_path, "environment: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    assert_well_formed(deep, problems(deep))
    loop = write(tmp_path, MINIMAL + "alerts: &a {x: *a}\nssh: &b [*b]\n", "loop.yaml")
    found = problems(loop)
    assert_well_formed(loop, found)
    assert len(found) == 2


# --- fuzzing: only ever a Config or a ConfigError ---------------------------------------------

KEYS = [
    "environment", "store", "ssh", "poll", "nodes", "endpoints", "alerts", "name", "host", "port",
    "gpus", "cost_per_hour_usd", "engine", "kind", "url", "service", "args_file", "user",
    "restart_command", "base_url", "model", "api_key_env", "probe", "price", "every", "prompt",
    "max_tokens", "timeout", "known_hosts", "identity_files", "connect_timeout", "keepalive",
    "input_per_mtok_usd", "output_per_mtok_usd", "p95_latency", "kv_cache_pct", "api_key",
    "stale_after_polls", "max_backoff",
]  # fmt: skip
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | TEXT
    | st.sampled_from(
        ["vllm", "openai", "anthropic", "15s", "250ms", "2m", "0s", "-1h", "gpu-a1", "~/x", "~",
         "http://h:8000/v1", "https://", "sk-" + "a1" * 10, "PRIMARY_API_KEY", "10.0.3.11"]
    )
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | TEXT, inner, max_size=5)
    ),
    max_leaves=25,
)
NODE = st.dictionaries(st.sampled_from(KEYS[7:17]), VALUES, max_size=7)
ENDPOINT = st.dictionaries(st.sampled_from(KEYS[19:27]), VALUES, max_size=8)
DOCUMENTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "environment": VALUES,
            "store": VALUES,
            "ssh": VALUES,
            "poll": VALUES,
            "nodes": st.lists(NODE, max_size=3) | VALUES,
            "endpoints": st.lists(ENDPOINT, max_size=3) | VALUES,
            "alerts": VALUES,
        },
    )
    | VALUES
)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def load_or_problems(path: Path) -> None:
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as error:
        assert_well_formed(path, error.problems)


@FUZZ
@given(document=DOCUMENTS)
def test_fuzzed_documents(tmp_path: Path, document: object) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    load_or_problems(path)


@FUZZ
@given(text=st.text(st.sampled_from(list("abc:-[]{}&*!|>'\"#,?% \n\t0123456789.~"))) | TEXT)
def test_fuzzed_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    load_or_problems(path)
