"""The runbook loader: a corpus of broken runbooks, the records a good one becomes, folders,
parameter values, and templates (the shell quoting above all)."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from console import cli
from console.facts import Figure, figure_text
from console.runbook import (
    PARAM_TYPES,
    ActionCall,
    Command,
    Condition,
    Param,
    ParamError,
    Relative,
    RunbookError,
    WhenParam,
    check_value,
    format_value,
    lint,
    load_folders,
    load_runbook,
    parse_param,
    render_shell,
    render_text,
    render_value,
    shipped_folder,
    template_names,
)
from console.runner import Run

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).parent / "runbooks"
GOOD = HERE / "good" / "latency-spike.yaml"
BROKEN = sorted((HERE / "broken").glob("*.yaml"))


def write(folder: Path, text: str, name: str = "runbook.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    assert caught.value.problems == lint([path])
    return caught.value.problems


def assert_well_formed(path: Path, found: list[str]) -> None:
    """Every problem is one `FILE:LINE: key.path: message` line."""
    assert found
    line = re.compile(rf"^{re.escape(str(path))}:\d+: \S+: .+$")
    for problem in found:
        assert "\n" not in problem and "\r" not in problem
        assert line.match(problem), problem
        assert "Traceback" not in problem


# --- the broken corpus ------------------------------------------------------------------------


def expectation(path: Path) -> tuple[str, int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# expect: "), f"{path.name} has no '# expect:' line"
    assert lines[1].startswith("# line: "), f"{path.name} has no '# line:' line"
    return lines[0].removeprefix("# expect: "), int(lines[1].removeprefix("# line: "))


def test_the_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 24


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_runbook(path: Path) -> None:
    fragment, line = expectation(path)
    found = problems(path)
    assert_well_formed(path, found)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:{line}: "), found
    assert fragment in found[0], found


def test_all_problems_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: latency spike
        title: T
        params:
          node: {type: node, required: true}
          mode: {type: enum, choices: [fast, safe], default: quick}
        steps:
          - id: shrink
            kind: mutate
            action: engine.set_arg
            expect: []
          - id: settle
            kind: wait
            until: [{figure: itl_p95, node: "{{ nod }}", below: 150ms}]
          - id: shrink
            kind: note
            text: "{{ node | upper }}"
        """,
    )
    found = problems(path)
    assert_well_formed(path, found)
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines)
    assert [p.split(": ", 2)[1] for p in found] == [
        "id",
        "params.mode.default",
        "steps[0].action",
        "steps[0].expect",
        "steps[1].timeout",
        "steps[1].until[0].node",
        "steps[2].id",
        "steps[2].text",
    ]


# --- a good runbook ---------------------------------------------------------------------------


def test_a_good_runbook_loads_into_the_records() -> None:
    runbook = load_runbook(GOOD)
    assert lint([GOOD]) == []
    assert (runbook.id, runbook.title, runbook.path, runbook.line) == (
        "latency-spike",
        "Latency spike on one vLLM node",
        GOOD,
        1,
    )
    assert runbook.description.startswith("Inter-token latency is up on one node")
    assert runbook.alerts == ("itl_p95", "e2e_p95")
    assert runbook.symptoms == ("ITL P95 up on one node while the KV cache fills",)

    # Defaults are typed; facts are named, to be read when the run starts.
    defaults = {p.name: p.default for p in runbook.params}
    assert defaults["max_batched_tokens"] == 2048
    assert defaults["settle"] == 30.0 and isinstance(defaults["settle"], float)
    assert defaults["ratio"] == 1.5
    assert defaults["dry"] is False
    assert defaults["mode"] == "safe"
    node = runbook.param("node")
    assert (node.type, node.fact, node.default, node.required) == (
        "node",
        "worst_itl_node",
        None,
        False,
    )
    revision = runbook.param("revision")
    assert (revision.fact, revision.fact_of, revision.pattern) == (
        "pinned_revision",
        "node",
        "[0-9a-f]{7,40}",
    )
    assert runbook.param("endpoint").required
    settle = runbook.param("settle")
    assert (settle.minimum, settle.maximum) == (10.0, 600.0)
    assert runbook.param("mode").choices == ("fast", "safe")
    assert runbook.param("max_batched_tokens").line == 11
    with pytest.raises(KeyError):
        runbook.param("nope")

    look, shrink, settle_step, gate, ask, note_action, restart, remember = runbook.steps
    assert (look.kind, look.line, look.title) == (
        "check",
        22,
        "ITL, TTFT, queue and KV cache on {{ node }}",
    )
    assert look.show == (
        Condition("itl_p95", "node", "{{ node }}", line=25),
        Condition("kv_cache_pct", "node", "{{ node }}", line=25),
    )
    assert look.expect == (Condition("itl_p95", "node", "{{ node }}", above=0.15, line=27),)
    assert look.command == Command(
        "{{ node }}", "journalctl -u vllm.service -n {{ lines }} --no-pager", 28
    )
    assert not look.mutating

    assert shrink.action == ActionCall(
        "engine.set_args",
        {
            "node": "{{ node }}",
            "set": {"max-num-batched-tokens": "{{ max_batched_tokens }}"},
            "wait": "{{ settle }}",
        },
        31,
    )
    assert shrink.rollback == ActionCall("engine.restore_args", {}, 34, inherit=True)
    assert shrink.confirm is not None and shrink.confirm.startswith("Restart vLLM on {{ node }}")
    assert (shrink.on_failure, shrink.timeout_s) == ("rollback", 360.0)
    assert (shrink.retry_attempts, shrink.retry_delay_s) == (2, 10.0)
    assert shrink.when == WhenParam("mode", equals="fast", line=38)
    assert shrink.mutating

    assert settle_step.until == (
        Condition("itl_p95", "node", "{{ node }}", below=0.15, min_requests=20, line=42),
    )
    assert (settle_step.timeout_s, settle_step.every_s, settle_step.window_s) == (300, 5, 30)

    assert gate.expect[0].at_most == Relative(1.5, 1.0, "upstream", "{{ stable }}")
    assert (gate.expect[0].subject_kind, gate.expect[0].subject) == ("upstream", "{{ canary }}")
    assert gate.expect[1].window_s == 120.0 and gate.expect[1].below == 4.0
    assert gate.when == WhenParam("mode", in_=("fast", "safe"), line=53)
    assert gate.on_failure == "stop"

    assert ask.question == "Traffic on {{ node }} looks healthy. Keep the new settings?"
    assert [c.figure for c in ask.evidence] == ["itl_p95", "error_pct"]
    assert ask.when == Condition("requests_per_s", "node", "{{ node }}", above=1.0, line=59)

    # incident.note is allowed in a mutate step, and changes nothing but the log.
    assert note_action.action is not None and note_action.action.action == "incident.note"
    assert not note_action.mutating and note_action.rollback is None
    assert note_action.when == WhenParam("dry", not_=True, line=64)

    # node.run has no compensation: nothing undoes it unless the runbook says how.
    assert restart.rollback is None and restart.mutating
    assert remember.text == "Batch tokens lowered to {{ max_batched_tokens }} on {{ node }}"


ADMIN_CALL = """\
    id: drain-admin
    title: Drain a node through the gateway's admin API
    steps:
      - id: drain
        kind: mutate
        action: http.request
        with:
          method: POST
          url: http://gateway.internal:4000/admin/drain
          header_env: {Authorization: GATEWAY_ADMIN_TOKEN, X-Api-Key: GATEWAY_KEY}
    """


def test_header_env_names_variables_for_secret_headers(tmp_path: Path) -> None:
    """``header_env: {Authorization: VAR}`` names where the secret is: it loads; a literal
    credential there, or a literal Authorization header, is still refused at its line."""
    loaded = load_runbook(write(tmp_path, ADMIN_CALL))
    call = loaded.steps[0].action
    assert call is not None
    assert call.args["header_env"] == {
        "Authorization": "GATEWAY_ADMIN_TOKEN",
        "X-Api-Key": "GATEWAY_KEY",
    }
    secret = "literal secrets are not allowed in the runbook (name an environment variable"
    literal = ADMIN_CALL.replace("GATEWAY_ADMIN_TOKEN", '"Bearer sk-proj-0123456789abcdefghij"')
    assert problems(write(tmp_path, literal, "literal.yaml")) == [
        f"{tmp_path / 'literal.yaml'}:10: steps[0].with.header_env.Authorization: {secret}"
        " that holds it)"
    ]
    header = ADMIN_CALL.replace(
        "header_env: {Authorization: GATEWAY_ADMIN_TOKEN,",
        "headers: {Authorization: GATEWAY_ADMIN_TOKEN,",
    )
    assert problems(write(tmp_path, header, "header.yaml")) == [
        f"{tmp_path / 'header.yaml'}:10: steps[0].with.headers.{key}: {secret} that holds it)"
        for key in ("Authorization", "X-Api-Key")
    ]


def test_the_readme_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "runbooks" / "README.md").read_text(encoding="utf-8")
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example, encoding="utf-8")
    assert lint([path]) == []
    assert [s.kind for s in load_runbook(path).steps] == [
        "check",
        "mutate",
        "wait",
        "confirm",
        "note",
    ]


def test_rollbacks_written_and_inherited(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: r
        title: R
        params:
          node: {type: node, required: true}
          weight: {type: int, default: 0}
        steps:
          - id: drain
            kind: mutate
            action: routing.set_weights
            with: {weights: {primary: "{{ weight }}", backup: 100}}
          - id: restart
            kind: mutate
            action: node.run
            with: {node: "{{ node }}", command: "sudo systemctl restart vllm.service"}
            rollback: {action: node.run, with: {node: "{{ node }}", command: "true"}}
          - id: shrink
            kind: mutate
            action: engine.set_args
            with: {node: "{{ node }}", unset: [enable-chunked-prefill]}
            rollback: {action: engine.restore_args}
        """,
    )
    drain, restart, shrink = load_runbook(path).steps
    assert drain.rollback == ActionCall("routing.set_weights", {}, 9, inherit=True)
    assert restart.rollback == ActionCall(
        "node.run", {"node": "{{ node }}", "command": "true"}, 15, inherit=False
    )
    assert shrink.rollback == ActionCall("engine.restore_args", {}, 20, inherit=True)


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("journalctl -n {{ n }}", None),
        ("echo a{{ n }}b --x={{ n }} {{ n }}{{ n }}", None),
        ("echo \\\\{{ n }}", None),  # an escaped backslash, then the value
        ("echo \\${{ n }}", None),  # a literal $, then the value
        ("cat <<< {{ n }}", None),  # a here-string's word is quoted like any
        ("echo '#' {{ n }} a#b {{ n }}", None),
        ('echo "{{ n }}"', "is inside quotes"),
        ("echo 'a {{ n }} b'", "is inside quotes"),
        ("echo \"$(cat '{{ n }}')\"", "is inside quotes"),
        ("echo $'{{ n }}'", "is inside quotes"),
        ("echo \\{{ n }}", "comes right after a backslash"),
        ("echo ${{ n }}", "comes right after a $"),
        ("true # {{ n }}", "is in a shell comment"),
        ("true;# {{ n }}", "is in a shell comment"),
        ("cat <<EOF\n{{ n }}\nEOF", "is in a here-document"),
    ],
)
def test_where_a_shell_command_may_insert_a_parameter(
    tmp_path: Path, command: str, problem: str | None
) -> None:
    path = _shell_runbook(tmp_path, command)
    found = lint([path])
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and problem in found[0], found
        assert ": steps[0].with.command: {{ n }} " in found[0]


def _shell_runbook(folder: Path, command: str) -> Path:
    # A block scalar holds the command exactly as written, quotes and backslashes included.
    body = textwrap.indent(command, " " * 10)
    return write(
        folder,
        f"""\
id: s
title: S
params:
  node: {{type: node, required: true}}
  n: {{type: string, required: true}}
steps:
  - id: run
    kind: mutate
    action: node.run
    with:
      node: "{{{{ node }}}}"
      command: |-
{body}
""",
    )


# --- folders ----------------------------------------------------------------------------------

ONE = """\
id: {id}
title: {title}
steps:
  - {{id: a, kind: note, text: hi}}
"""


def test_a_later_folder_replaces_a_runbook_and_duplicates_in_a_folder_are_named(
    tmp_path: Path,
) -> None:
    shipped, team = tmp_path / "shipped", tmp_path / "team"
    shipped.mkdir()
    team.mkdir()
    (shipped / "a.yaml").write_text(ONE.format(id="failover", title="Shipped"))
    (shipped / "b.yml").write_text(ONE.format(id="rollback", title="Shipped"))
    (shipped / "notes.txt").write_text("not a runbook")
    (team / "failover.yaml").write_text(ONE.format(id="failover", title="Team"))
    (team / "z-copy.yaml").write_text(ONE.format(id="failover", title="Copy"))
    (team / "broken.yaml").write_text("id: x\nsteps: []\n")

    runbooks, found = load_folders([shipped, team])
    assert sorted(runbooks) == ["failover", "rollback"]
    assert runbooks["failover"].title == "Team"
    assert runbooks["rollback"].path == shipped / "b.yml"
    assert found == [
        f"{team / 'broken.yaml'}:1: title: missing required key (expected a non-empty string)",
        f"{team / 'broken.yaml'}:2: steps: is empty (expected at least one step)",
        f"{team / 'z-copy.yaml'}:1: id: duplicate runbook id 'failover' (also in "
        f"{team / 'failover.yaml'}:1; expected one runbook per id in a folder)",
    ]
    assert lint([team]) == found
    assert lint([shipped, team / "failover.yaml"]) == []


def test_a_missing_folder_is_a_problem(tmp_path: Path) -> None:
    runbooks, found = load_folders([tmp_path / "nope"])
    assert runbooks == {}
    assert found == [
        f"{tmp_path / 'nope'}:1: (folder): no such folder (expected a folder of runbook YAML files)"
    ]


def test_the_shipped_folder_is_the_runbooks_package() -> None:
    folder = shipped_folder()
    assert folder == ROOT / "runbooks"
    assert (folder / "README.md").is_file()
    assert load_folders([folder])[1] == []


# --- parameter values -------------------------------------------------------------------------

TOKENS = Param("max_batched_tokens", "int", minimum=256, maximum=65536)
RATIO = Param("ratio", "float", minimum=0.5)
SETTLE = Param("settle", "duration", minimum=10.0, maximum=600.0)
DRY = Param("dry", "bool")
MODE = Param("mode", "enum", choices=("fast", "safe"))
REVISION = Param("revision", "string", pattern="[0-9a-f]{7,40}")
REASON = Param("reason", "string")
NODE = Param("node", "node")
ENDPOINT = Param("endpoint", "endpoint")
UPSTREAM = Param("upstream", "upstream")


@pytest.mark.parametrize(
    ("param", "text", "value"),
    [
        (TOKENS, "2048", 2048),
        (TOKENS, "+256", 256),
        (Param("n", "int"), "-3", -3),
        (RATIO, "1.5", 1.5),
        (RATIO, "2", 2.0),
        (RATIO, "1e3", 1000.0),
        (SETTLE, "30s", 30.0),
        (SETTLE, "5m", 300.0),
        (SETTLE, "90", 90.0),
        (DRY, "true", True),
        (DRY, "Yes", True),
        (DRY, "1", True),
        (DRY, "false", False),
        (DRY, "no", False),
        (DRY, "0", False),
        (MODE, "fast", "fast"),
        (REVISION, "3f2a9c1", "3f2a9c1"),
        (REASON, "ITL up; see #inc-42 && 'quotes'", "ITL up; see #inc-42 && 'quotes'"),
        (NODE, "gpu-a1", "gpu-a1"),
        (ENDPOINT, "chat.primary", "chat.primary"),
        (UPSTREAM, "backup_1", "backup_1"),
    ],
)
def test_parse_param_reads_each_type(param: Param, text: str, value: object) -> None:
    parsed = parse_param(param, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("param", "text", "message"),
    [
        (
            TOKENS,
            "abc",
            "--param max_batched_tokens=abc: not an integer "
            "(expected an integer from 256 to 65536)",
        ),
        (
            TOKENS,
            "100000",
            "--param max_batched_tokens=100000: out of range "
            "(expected an integer from 256 to 65536)",
        ),
        (TOKENS, "1.5", "--param max_batched_tokens=1.5: not an integer (expected an integer"),
        (TOKENS, "", "--param max_batched_tokens=: not an integer"),
        (TOKENS, "9" * 5000, "--param max_batched_tokens='9999"),
        (RATIO, "nan", "--param ratio=nan: not a number (expected a number of at least 0.5)"),
        (RATIO, "1e999", "--param ratio=1e999: not a finite number"),
        (RATIO, "0.1", "--param ratio=0.1: out of range (expected a number of at least 0.5)"),
        (SETTLE, "5 minutes", "--param settle=5 minutes: not a duration (expected a duration "),
        (SETTLE, "1s", "--param settle=1s: out of range (expected a duration from 10s to 10m)"),
        (Param("d", "duration"), "0s", "--param d=0s: not greater than zero"),
        (Param("d", "duration"), "x", "(expected a duration such as 30s or 5m)"),
        (DRY, "maybe", "--param dry=maybe: not true or false (expected true or false)"),
        (
            MODE,
            "quick",
            "--param mode=quick: not one of the choices (expected one of: fast, safe)",
        ),
        (
            REVISION,
            "main",
            "--param revision=main: not matching the pattern "
            "(expected a string matching [0-9a-f]{7,40})",
        ),
        (REASON, "", "--param reason=: empty (expected a non-empty string)"),
        (REASON, "a\0b", "--param reason='a\\x00b': holding a NUL character"),
        (NODE, "gpu\na1", "--param node='gpu\\na1': not a node name"),
        (NODE, "gpu a1", "--param node=gpu a1: not a node name (expected a node name)"),
        (ENDPOINT, "chat/v1", "--param endpoint=chat/v1: not an endpoint name"),
        (UPSTREAM, "", "--param upstream=: empty (expected an upstream name)"),
    ],
)
def test_parse_param_names_the_parameter_in_one_line(param: Param, text: str, message: str) -> None:
    with pytest.raises(ParamError) as caught:
        parse_param(param, text)
    said = str(caught.value)
    assert said.startswith(message) or message in said, said
    assert "\n" not in said and len(said) < 200


def test_every_type_is_tested() -> None:
    tested = {TOKENS, RATIO, SETTLE, DRY, MODE, REVISION, NODE, ENDPOINT, UPSTREAM}
    assert {p.type for p in tested} == PARAM_TYPES


@pytest.mark.parametrize(
    ("param", "value", "checked"),
    [
        (TOKENS, 300, 300),
        (RATIO, 1, 1.0),
        (SETTLE, "1m", 60.0),
        (SETTLE, 45, 45.0),
        (DRY, False, False),
        (MODE, "safe", "safe"),
        (REVISION, "3f2a9c1", "3f2a9c1"),
        (NODE, "gpu-a1", "gpu-a1"),
    ],
)
def test_check_value_takes_typed_values(param: Param, value: object, checked: object) -> None:
    result = check_value(param, value)
    assert result == checked and type(result) is type(checked)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        (TOKENS, True, "max_batched_tokens=true: not an integer"),
        (TOKENS, 10, "max_batched_tokens=10: out of range (expected an integer from 256 to 65536)"),
        (TOKENS, "2048", "max_batched_tokens='2048': not an integer"),
        (SETTLE, 1.0, "settle=1: out of range (expected a duration from 10s to 10m)"),
        (DRY, "true", "dry='true': not true or false"),
        (REVISION, "zz", "revision='zz': not matching the pattern"),
        (NODE, None, "node=None: not a string (expected a node name)"),
        (MODE, "quick", "mode='quick': not one of the choices (expected one of: fast, safe)"),
    ],
)
def test_check_value_refuses_what_the_parameter_cannot_take(
    param: Param, value: object, message: str
) -> None:
    with pytest.raises(ParamError, match=re.escape(message)):
        check_value(param, value)


@pytest.mark.parametrize(
    ("value", "param_type", "text"),
    [
        (30.0, "duration", "30s"),
        (300.0, "duration", "5m"),
        (7200.0, "duration", "2h"),
        (90.0, "duration", "90s"),
        (0.5, "duration", "0.5s"),
        (True, "bool", "true"),
        (False, "bool", "false"),
        (2048, "int", "2048"),
        (2.0, "float", "2"),
        (1e-07, "float", "0.0000001"),
        ("gpu-a1", "node", "gpu-a1"),
    ],
)
def test_format_value(value: object, param_type: str, text: str) -> None:
    assert format_value(value, param_type) == text


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.floats(min_value=1e-6, max_value=1e12, allow_nan=False),
    number=st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_shown_value_reads_back_as_itself(seconds: float, number: float) -> None:
    duration = Param("d", "duration")
    assert parse_param(duration, format_value(seconds, "duration")) == seconds
    assert parse_param(Param("f", "float"), format_value(number, "float")) == number


# --- templates --------------------------------------------------------------------------------


def test_templates_render_as_text_and_as_typed_values() -> None:
    values = {"node": "gpu-a1", "n": 2048, "settle": 30.0, "dry": False, "ratio": 1.5}
    assert template_names("{{ node }} {{n}} {{ node }}") == ("node", "n")
    assert render_text("Restart {{ node }} with {{n}} ({{ dry }}, {{ settle }}s)?", values) == (
        "Restart gpu-a1 with 2048 (false, 30s)?"
    )
    args = {"node": "{{ node }}", "set": {"max-num-batched-tokens": "{{ n }}"}, "l": ["{{ n }}"]}
    assert render_value(args, values) == {
        "node": "gpu-a1",
        "set": {"max-num-batched-tokens": 2048},
        "l": [2048],
    }
    assert render_value("{{ settle }}", values) == 30.0
    assert render_value("n={{ n }}", values) == "n=2048"
    assert render_value(5, values) == 5
    assert render_value("{{ n }}", values, shell=True) == "2048"
    assert render_shell("journalctl -n {{ n }}", {"n": "5; rm -rf /"}) == (
        "journalctl -n '5; rm -rf /'"
    )


# Text a shell treats specially, mixed with the rest of Unicode (no NUL: argv cannot carry it).
SHELL_TEXT = st.lists(
    st.one_of(
        st.sampled_from(list(";|&$()`'\"\\\n\t *?[]{}<>#~!%=-^")),
        st.sampled_from(["$(", "'\\''", "{{ a }}", "}}", "\r", "é", "🙂", "\u200b"]),
        st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(a=SHELL_TEXT, b=SHELL_TEXT)
def test_a_parameter_reaches_the_shell_as_exactly_one_word(a: str, b: str) -> None:
    command = render_shell("printf '%s\\n' {{ a }} {{ b }}", {"a": a, "b": b})
    assert shlex.split(command) == ["printf", "%s\\n", a, b]
    ran = subprocess.run(["sh", "-c", command], capture_output=True, timeout=10, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"{a}\n{b}\n".encode()


def test_an_injection_attempt_stays_an_argument() -> None:
    command = render_shell("printf '%s\\n' {{ n }}", {"n": "5; echo pwned"})
    ran = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert ran.stdout == "5; echo pwned\n"


# --- robustness -------------------------------------------------------------------------------

KEYS = sorted(
    {
        *("id", "title", "kind", "figure", "node", "endpoint", "upstream", "above", "below"),
        *("at_most", "times", "plus", "of", "param", "equals", "in", "not", "action", "with"),
        *("set", "command", "run", "rollback", "type", "default", "fact", "min", "max"),
        *("choices", "pattern", "required", "timeout", "retry", "attempts", "delay", "every"),
        *("until", "window", "show", "expect", "question", "evidence", "text", "when"),
        *("on_failure", "min_requests", "weights", "wait", "lines"),
    }
)
WORDS = st.sampled_from(
    [
        *("{{ node }}", "{{ lines }}", "{{ mode }}", "{{ a | b }}", "{{", '"{{ node }}"'),
        *("30s", "150ms", "itl_p95", "kv_cache_pct", "error_pct", "engine.set_args"),
        *("engine.restore_args", "node.run", "node.inspect", "incident.note"),
        *("check", "mutate", "wait", "confirm", "note", "node", "int", "enum", "string"),
        *("duration", "worst_itl_node", "pinned_revision", "gpu-a1", "fast", "[a-z]+", "("),
    ]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(), WORDS, st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(KEYS), kids),
    max_leaves=12,
)
STEPS = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b"]), "kind": WORDS},
        optional={k: VALUES for k in KEYS if k not in ("id", "kind")},
    ),
    max_size=3,
)
RUNBOOKS = st.fixed_dictionaries(
    {"id": st.just("r"), "title": st.just("R"), "steps": STEPS},
    optional={
        "params": st.dictionaries(st.sampled_from(["node", "lines", "mode", "Bad"]), VALUES),
        "answers": VALUES,
    },
)


@settings(max_examples=150, deadline=None)
@given(data=RUNBOOKS)
def test_any_runbook_is_loaded_or_refused_in_lines(data: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        try:
            load_runbook(path)
        except RunbookError as error:
            assert_well_formed(path, error.problems)


def _places(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The path of every value inside ``value`` (mappings and lists), itself included."""
    found: list[tuple[object, ...]] = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _places(item, (*path, i))
    return found


def _put(data: Any, place: tuple[object, ...], value: object) -> None:
    """The value at ``place`` replaced, where an earlier change left that place in ``data``."""
    try:
        for part in place[:-1]:
            data = data[part]
        data[place[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


GOOD_DATA = yaml.safe_load(GOOD.read_text(encoding="utf-8"))
PLACES = _places(GOOD_DATA)[1:]


@settings(max_examples=200, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(PLACES), VALUES), min_size=1, max_size=3))
def test_a_good_runbook_changed_anywhere_is_loaded_or_refused_in_lines(
    changes: list[tuple[tuple[object, ...], object]],
) -> None:
    data = copy.deepcopy(GOOD_DATA)
    for place, value in changes:
        _put(data, place, value)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        try:
            load_runbook(path)
        except RunbookError as error:
            assert_well_formed(path, error.problems)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0001, "0.1 ms"), (0.0056, "5.6 ms"), (0.0754, "75 ms"), (0.212, "212 ms"), (4.2, "4.20 s")],
)
def test_a_latency_limit_is_shown_as_written(seconds: float, text: str) -> None:
    """``below: 0.0001`` reads "< 0.1 ms", not "< 0 ms"."""
    assert figure_text("itl_p95", Figure(seconds)) == text


def test_list_and_show_need_no_config(tmp_path: Path, monkeypatch, capfd) -> None:
    """On a new bastion (no config yet) `runbook list` and `show` read the shipped runbooks."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    assert cli.run(["runbook", "list"]) == 0
    listed = capfd.readouterr().out
    for shipped in shipped_folder().glob("*.yaml"):
        assert load_runbook(shipped).id in listed
    assert cli.run(["runbook", "show", "latency-spike"]) == 0
    shown = capfd.readouterr().out
    assert "lower-batched-tokens" in shown
    assert "window (duration, default: 30s)" in shown  # not 30.0


def test_a_runbook_that_did_not_load_is_named_as_such(tmp_path: Path, capfd) -> None:
    """A team runbook with a lint error: asked for by id, the console says it did not load
    and where to look, not just "unknown runbook"."""
    folder = tmp_path / "team"
    folder.mkdir()
    write(folder, "id: my-fix\ntitle: Mine\nsteps: []\nbogus: 1\n", "my-fix.yaml")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"environment: test\nstore: {tmp_path / 'log.db'}\nrunbooks: [{folder}]\n"
        "nodes: [{name: gpu-a1, host: 127.0.0.1, port: 9}]\n"
    )
    for command in (["show", "my-fix"], ["run", "my-fix", "--dry-run"]):
        with pytest.raises(cli.UsageError) as caught:
            cli.run(["--config", str(config), "runbook", *command])
        message = str(caught.value)
        assert message.startswith("runbook 'my-fix' is not loaded"), message
        assert str(folder / "my-fix.yaml") in message and "llmops runbook lint" in message
        assert f"{folder / 'my-fix.yaml'}:" in capfd.readouterr().err  # the problem itself


def test_a_figure_that_covers_less_than_its_window_says_so_in_whole_seconds() -> None:
    """A window cut at a change is a float like 5.01905: shown as 5s, not to the microsecond."""
    assert Run._span_text(Figure(1.0, window_s=4.0), 5.01905) == " over 4s of 5s"
    assert Run._span_text(Figure(1.0, window_s=12.0), 120.0) == " over 12s of 2m"
    assert Run._span_text(Figure(1.0, window_s=29.0), 30.0) == ""  # covers it: nothing said
