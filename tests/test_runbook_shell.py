"""Parameter values reach a remote shell as exactly one word each: checked on a real OpenSSH
``sshd`` (the login shell runs the rendered command, as on a GPU node), with values full of
shell metacharacters, quotes, newlines, ``$()``, backticks and unicode. And the linter refuses
every place where that quoting does not hold: backticks, and the words a program parses again
as shell code (``sh -c``, ``eval``, ``ssh``, ``su -c``, a pipe into a shell, ...), checked
against a real bash."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ssh import SshPool, SshTarget
from console.runbook import _shell_problems, lint, render_shell
from tests.conftest import FIXTURES
from tests.sshd import Sshd, sshd_available, start_sshd

if not sshd_available() and os.environ.get("LLMOPS_REQUIRE_SSHD"):
    raise RuntimeError("LLMOPS_REQUIRE_SSHD is set but OpenSSH sshd is not installed")
needs_sshd = pytest.mark.skipif(
    not sshd_available(), reason="OpenSSH sshd is not installed (.ci/run installs it)"
)

# printf prints each argument followed by a NUL, which no argument can hold.
COMMAND = "printf '%s\\0' {{ a }} {{ b }}"
NASTY = ["; rm -rf /", "$(id)", "`id`", "a'b\"c", "x\ny", "--help", "", "*", "€ ü 日本", "\\"]
values = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(
        tmp_path_factory.mktemp("sshd"), FIXTURES / "gpu" / "nvidia-smi-query-load.csv"
    )
    yield server
    server.stop()


@pytest.fixture
async def pool(sshd: Sshd) -> AsyncIterator[SshPool]:
    target = SshTarget(
        node="box",
        host="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        known_hosts=sshd.known_hosts,
        identity_files=(Path(sshd.client_key),),
        connect_timeout_s=5.0,
        keepalive_s=15.0,
    )
    ssh = SshPool([target])
    yield ssh
    await ssh.close()


@needs_sshd
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(a=values, b=values)
async def test_a_real_shell_gets_each_value_as_one_word(pool: SshPool, a: str, b: str) -> None:
    command = render_shell(COMMAND, {"a": a, "b": b})
    assert shlex.split(command) == ["printf", "%s\\0", a, b]
    output = await pool.run("box", command, timeout_s=20)
    assert output.split("\0") == [a, b, ""]


# --- where the quoting does not hold: refused at lint -------------------------------------------

BASH = "/bin/bash" if Path("/bin/bash").exists() else None
needs_bash = pytest.mark.skipif(BASH is None, reason="no bash")


def _mutate_runbook(folder: Path, command: str) -> Path:
    path = folder / "r.yaml"
    body = textwrap.indent(command, " " * 10)
    path.write_text(
        "id: r\ntitle: R\nparams:\n  s: {type: string, required: true}\nsteps:\n"
        "  - id: run\n    kind: mutate\n    action: node.run\n    with:\n"
        f"      node: gpu-a1\n      command: |-\n{body}\n",
        encoding="utf-8",
    )
    return path


@needs_bash
def test_a_template_in_backticks_is_refused_because_bash_runs_the_value(tmp_path: Path) -> None:
    """The review's reproduction: quoting does not survive backtick substitution (bash finds
    the closing backtick before it honours quotes), so the value's own backtick ends it."""
    command = "echo `echo {{ s }}`"
    mark = tmp_path / "pwned"
    rendered = render_shell(command, {"s": f"`;touch {mark};echo `"})
    subprocess.run([BASH or "bash", "-c", rendered], capture_output=True, timeout=10, check=False)
    assert mark.exists()  # why it is refused
    path = _mutate_runbook(tmp_path, command)
    assert lint([path]) == [
        f"{path}:11: steps[0].with.command: {{{{ s }}}} is inside backticks, where quotes are "
        "not honoured and the value can end the substitution (expected $(...) instead of `...`)"
    ]


# Commands whose template a program parses again as code (or bash evaluates), with what the
# one-line error says.
REFUSED = [
    ("echo `echo {{ s }}`", "is inside backticks"),
    ("echo $(echo `cat {{ s }}`)", "is inside backticks"),
    ("sh -c {{ s }}", "is the command string of sh -c"),
    ("bash -c {{ s }}", "is the command string of bash -c"),
    ("bash -lc {{ s }}", "is the command string of bash -c"),
    ("bash -o pipefail -c {{ s }}", "is the command string of bash -c"),
    ("sudo -u vllm bash -c {{ s }}", "is the command string of bash -c"),
    ("timeout 5 sh -c {{ s }}", "is the command string of sh -c"),
    ("xargs sh -c {{ s }}", "is the command string of sh -c"),
    ("docker exec vllm sh -c {{ s }}", "is the command string of sh -c"),
    ("kubectl exec p -- bash -c {{ s }}", "is the command string of bash -c"),
    ("echo $(sh -c {{ s }})", "is the command string of sh -c"),
    # Inside $( ) the value is one word of the inner command, but what that prints is split,
    # globbed and, first on the line, run.
    ("$(printf %s {{ s }})", "is inside $(...)"),
    ("kill $(pgrep -f {{ s }})", "is inside $(...)"),
    ("source <(echo {{ s }})", "is in the script source runs"),
    ("bash {{ s }}", "names the script bash runs"),
    ("eval {{ s }}", "is an argument of eval"),
    ("eval $(printf %s {{ s }})", "is an argument of eval"),
    ("trap {{ s }} EXIT", "is an argument of trap"),
    ("ssh gw cmd {{ s }}", "is an argument of ssh"),
    ("ssh {{ s }} uptime", "is an argument of ssh"),
    ("su -c {{ s }}", "is the command of su -c"),
    ("su - vllm -c {{ s }}", "is the command of su -c"),
    ("su --command={{ s }}", "is the command of su -c"),
    ("runuser -u vllm -- sh -c {{ s }}", "is the command string of sh -c"),
    ("flock /run/l -c {{ s }}", "is the command of flock -c"),
    ("watch ls {{ s }}", "is an argument of watch"),
    ("python3 -c {{ s }}", "is program text for python"),
    ("perl -e {{ s }}", "is program text for perl"),
    ("sed s/a/{{ s }}/ f", "is in sed's script"),
    ("awk {{ s }} f", "is in awk's program"),
    ("echo {{ s }} | sh", "is piped into sh"),
    ("printf %s {{ s }} | env bash -s", "is piped into bash"),
    ("echo {{ s }} | xargs -I{} sh -c 'echo {}'", "is piped into xargs sh"),
    ("bash <<< {{ s }}", "is the input of bash"),
    ("(( {{ s }} > 3 ))", "is in shell arithmetic"),
    ("echo $(( {{ s }} + 1 ))", "is in shell arithmetic"),
    ("[[ {{ s }} -eq 1 ]]", "is inside [[ ]]"),
    ("[[ -f x || {{ s }} -gt 1 ]]", "is inside [[ ]]"),
    ("let v={{ s }}", "is an argument of let"),
    ("declare -i v={{ s }}", "is an argument of declare"),
    ("printf -v {{ s }} x", "names a variable for printf -v"),
    ("echo ${x[{{ s }}]}", "is inside ${...}"),
    ("a[{{ s }}]=1", "is in an array subscript"),
]


@pytest.mark.parametrize(("command", "why"), REFUSED, ids=[c for c, _ in REFUSED])
def test_a_template_a_program_parses_again_is_refused(
    tmp_path: Path, command: str, why: str
) -> None:
    found = lint([_mutate_runbook(tmp_path, command)])
    assert len(found) == 1, found
    assert ": steps[0].with.command: {{ s }} " + why in found[0], found
    assert "\n" not in found[0]


# Run by bash as rendered, each with a value that takes over where the rule is missing.
INJECTIONS = [
    "touch MARK",
    "`touch MARK`",
    "$(touch MARK)",
    ";touch MARK;",
    "`;touch MARK;echo `",
    "a[$(touch MARK)]",
    "x'; touch MARK; '",
    "\ntouch MARK\n",
    "__import__('os').system('touch MARK')",
]


def _injected(command: str, folder: Path) -> bool:
    """Whether bash, running the rendered command, runs any of INJECTIONS."""
    mark = folder / "MARK"
    for value in INJECTIONS:
        rendered = render_shell(command, {"s": value.replace("MARK", str(mark))})
        subprocess.run(
            [BASH or "bash", "-c", rendered],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
            check=False,
            cwd=folder,
        )
        if mark.exists():
            mark.unlink()
            return True
    return False


# What this machine can run without a remote host, another user or a file to name. (bash
# SCRIPT is refused too, as a parameter there names the code run and may be an option.)
RUNNABLE = [
    c
    for c, _ in REFUSED
    if not c.startswith(("ssh", "su", "sudo", "docker", "kubectl", "runuser", "flock", "watch"))
    and " f" not in c
    and c not in ("bash {{ s }}", "kill $(pgrep -f {{ s }})")
]


@needs_bash
@pytest.mark.parametrize("command", RUNNABLE)
def test_each_refusal_is_a_real_injection(tmp_path: Path, command: str) -> None:
    """Every rule above is needed: bash really runs a value in that place."""
    assert _injected(command, tmp_path)


ACCEPTED = [
    "journalctl -u vllm.service -n {{ s }} --no-pager",
    "echo a{{ s }}b --x={{ s }} {{ s }}{{ s }}",
    "pgrep -f {{ s }} | xargs -r kill -0",
    "diff <(cat {{ s }}) /dev/null",  # <( ) gives a file name, one word
    'sh -c \'printf "%s\\n" "$1"\' sh {{ s }}',  # the value as $1: data
    "bash -c 'echo \"$0\"' {{ s }}",
    "X={{ s }} printenv X",
    "export FOO={{ s }}",
    "test {{ s }} = x",
    "[ {{ s }} = x ]",
    "cat <<< {{ s }}",
    "echo {{ s }} | cat",
    "echo {{ s }} > /dev/null",
    'for i in {{ s }}; do echo "$i"; done',
    "case {{ s }} in a) echo a;; esac",
    "python3 -c 'import sys; print(sys.argv[1])' {{ s }}",
    "awk -v x={{ s }} 'BEGIN {print x}'",
    "journalctl -u ssh -n {{ s }}",  # a unit named ssh is not ssh
    "sudo -u {{ s }} true",
    "true && echo {{ s }} || echo {{ s }}",
]


@pytest.mark.parametrize("command", ACCEPTED)
def test_a_template_as_a_plain_word_is_accepted(tmp_path: Path, command: str) -> None:
    assert lint([_mutate_runbook(tmp_path, command)]) == []


PREFIXES = st.sampled_from(["", "env ", "timeout 5 ", "nice -n 1 ", "command ", "time "])
CORES = st.sampled_from(
    [c for c, _ in REFUSED if c in RUNNABLE]
    + [c for c in ACCEPTED if "journalctl" not in c and "sudo" not in c]
    + ["printf '%s\\n' {{ s }}", "echo {{ s }} | sh -c 'cat'", "read -r v <<< {{ s }}"]
)
JOINS = st.sampled_from(["; ", " && ", " | ", "\n"])


@needs_bash
@settings(max_examples=120, deadline=None)
@given(
    parts=st.lists(st.tuples(PREFIXES, CORES), min_size=1, max_size=3),
    join=JOINS,
    wrap=st.sampled_from(["{}", "({})", "echo $({})", "{{ {}; }}"]),
)
def test_what_lint_accepts_never_runs_a_value(
    parts: list[tuple[str, str]], join: str, wrap: str
) -> None:
    """Commands put together from the pieces above (wrappers, pipes, subshells, $( )):
    whenever the linter accepts one, bash running it with each injection value runs none."""
    command = wrap.format(join.join(p + c for p, c in parts))
    if _shell_problems(command):
        return
    with tempfile.TemporaryDirectory() as folder:
        assert not _injected(command, Path(folder)), command
