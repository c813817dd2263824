"""Parameter values reach a remote shell as exactly one word each: checked on a real OpenSSH
``sshd`` (the login shell runs the rendered command, as on a GPU node), with values full of
shell metacharacters, quotes, newlines, ``$()``, backticks and unicode."""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.ssh import SshPool, SshTarget
from console.runbook import render_shell
from tests.conftest import FIXTURES
from tests.sshd import Sshd, sshd_available, start_sshd

if not sshd_available() and os.environ.get("LLMOPS_REQUIRE_SSHD"):
    raise RuntimeError("LLMOPS_REQUIRE_SSHD is set but OpenSSH sshd is not installed")
pytestmark = pytest.mark.skipif(
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
