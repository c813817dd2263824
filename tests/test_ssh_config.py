"""Where the console connects: the OpenSSH client config read through asyncssh's parser, and
what the llmops config sets explicitly winning over it (no daemon needed)."""

from __future__ import annotations

import getpass
import textwrap
from pathlib import Path

import pytest

from backends.ssh import DEFAULT_USER, SshError, SshTarget, resolve
from console.config import ConfigError, load_config
from console.hub import ssh_target


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own: ~/.ssh here is the test's, never the engineer's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    return tmp_path / "home"


def _config(tmp_path: Path, text: str, name: str = "ssh_config") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_host_alias_takes_everything_from_ssh_config(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    included = _config(
        tmp_path,
        """\
        Host bastion
          HostName 203.0.113.7
          User alice
          Port 2222
        """,
        "bastion.conf",
    )
    config = _config(
        tmp_path,
        f"""\
        Include {included}
        Host gpu-a1
          HostName 10.0.3.11
          User ops
          Port 2200
          IdentityFile ~/.ssh/fleet_key
          IdentitiesOnly yes
          ConnectTimeout 4
          ServerAliveInterval 7
          UserKnownHostsFile ~/.ssh/fleet_known_hosts
          ProxyJump bastion
        Host *
          User nobody
          IdentityAgent none
        """,
    )
    route = resolve(SshTarget(node="gpu-a1", host="gpu-a1", ssh_config=config))
    node = route.node
    assert (node.host, node.port, node.user) == ("10.0.3.11", 2200, "ops")
    assert node.identity_files == (home / ".ssh" / "fleet_key",)
    assert node.identities_only and node.identity_files_named
    assert (node.connect_timeout_s, node.keepalive_s) == (4.0, 7.0)
    assert node.known_hosts[0] == home / ".ssh" / "fleet_known_hosts"
    assert node.agent is None  # IdentityAgent none, whatever SSH_AUTH_SOCK says
    assert node.known_hosts_name == "[10.0.3.11]:2200"
    (jump,) = route.jumps
    assert (jump.name, jump.host, jump.port, jump.user) == ("bastion", "203.0.113.7", 2222, "alice")
    # Its own block says nothing of keys or known_hosts: OpenSSH's defaults.
    assert jump.known_hosts[0] == home / ".ssh" / "known_hosts"
    assert not jump.identity_files_named
    assert jump.agent is None  # Host * applies to it too


def test_what_the_llmops_config_sets_wins_on_the_node_and_its_jump_hosts(
    tmp_path: Path,
) -> None:
    config = _config(
        tmp_path,
        """\
        Host gpu-a1
          HostName 10.0.3.11
          User ops
          Port 2200
          ConnectTimeout 4
          UserKnownHostsFile /elsewhere
          ProxyJump jumper@bastion:2022
        """,
    )
    known = tmp_path / "known_hosts"
    key = tmp_path / "key"
    route = resolve(
        SshTarget(
            node="gpu-a1",
            host="gpu-a1",
            port=22,
            user="llmops",
            known_hosts=known,
            identity_files=(key,),
            connect_timeout_s=9.0,
            keepalive_s=3.0,
            ssh_config=config,
        )
    )
    node, (jump,) = route.node, route.jumps
    assert (node.host, node.port, node.user) == ("10.0.3.11", 22, "llmops")
    assert (node.known_hosts, node.identity_files) == ((known,), (key,))
    assert (node.connect_timeout_s, node.keepalive_s) == (9.0, 3.0)
    # User and port are the node's; the trust store, keys and timeouts are every hop's.
    assert (jump.user, jump.port) == ("jumper", 2022)
    assert (jump.known_hosts, jump.identity_files, jump.connect_timeout_s) == (
        (known,),
        (key,),
        9.0,
    )


def test_defaults_without_any_ssh_config(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    route = resolve(SshTarget(node="gpu-a1", host="10.0.3.11", ssh_config=tmp_path / "absent"))
    assert route.node.agent == str(tmp_path / "agent.sock")
    node = route.node
    assert (node.host, node.port, node.user) == ("10.0.3.11", 22, DEFAULT_USER)
    assert node.known_hosts[:2] == (home / ".ssh/known_hosts", home / ".ssh/known_hosts2")
    assert home / ".ssh/id_ed25519" in node.identity_files and not node.identity_files_named
    assert (node.connect_timeout_s, node.keepalive_s) == (10.0, 15.0)
    assert route.jumps == ()
    assert node.known_hosts_name == "10.0.3.11"


def test_a_jump_chain_and_a_jump_hosts_own_jump(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """\
        Host gpu-*
          ProxyJump inner,[2001:db8::2]:2022
        Host inner
          ProxyJump outer
          HostName 10.0.0.2
        Host outer
          HostName 198.51.100.1
          User edge
        """,
    )
    route = resolve(SshTarget(node="gpu-b7", host="gpu-b7", ssh_config=config))
    assert [(h.host, h.port) for h in route.jumps] == [
        ("198.51.100.1", 22),
        ("10.0.0.2", 22),
        ("2001:db8::2", 2022),
    ]
    assert route.jumps[0].user == "edge"
    assert route.jumps[1].user == getpass.getuser()  # OpenSSH's default for a jump host
    direct = resolve(SshTarget(node="gpu-b7", host="gpu-b7", ssh_config=config, jump="none"))
    assert direct.jumps == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Host *\n  ProxyJump loop\n", r"^gpu-a1: ssh config: ProxyJump nests deeper than 8"),
        ("Host *\n  UserKnownHostsFile none\n", r"UserKnownHostsFile none would turn host key"),
        ("Host *\n  Port many\n", r"^gpu-a1: ssh config: .*ssh_config line 2: Invalid Port"),
    ],
    ids=["jump-loop", "known-hosts-none", "bad-port"],
)
def test_an_ssh_config_the_console_cannot_use_is_one_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = _config(tmp_path, text)
    with pytest.raises(SshError, match=expected) as info:
        resolve(SshTarget(node="gpu-a1", host="gpu-a1", ssh_config=config))
    assert "\n" not in str(info.value)


# --- the llmops config: ssh.config and what is set explicitly ------------------------------


MINIMAL = "environment: staging\nnodes:\n  - {name: gpu-a1, host: gpu-a1}\n"


def test_ssh_config_defaults_to_the_users_and_may_be_none(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert config.ssh.config == home / ".ssh" / "config"  # absent: fine, none is read
    assert resolve(ssh_target(config, config.nodes[0])).node.host == "gpu-a1"
    path.write_text(MINIMAL + "ssh: {config: none}\n")
    assert load_config(path).ssh.config is None


def test_a_named_ssh_config_that_is_missing_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + "ssh:\n  config: ssh/fleet_config\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:5: ssh.config: 'ssh/fleet_config' not found "
        "(expected an OpenSSH client config file, or none)"
    ]


def test_only_explicit_llmops_values_override_ssh_config(tmp_path: Path) -> None:
    ssh_config = _config(tmp_path, "Host gpu-a1\n  HostName 10.0.3.11\n  User ops\n  Port 2200\n")
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + f"ssh: {{config: {ssh_config}}}\n")
    config = load_config(path)
    target = ssh_target(config, config.nodes[0])
    assert (target.user, target.port, target.known_hosts, target.identity_files) == (
        None,
        None,
        None,
        None,
    )
    node = resolve(target).node
    assert (node.host, node.port, node.user) == ("10.0.3.11", 2200, "ops")

    path.write_text(
        "environment: staging\nnodes:\n  - {name: gpu-a1, host: gpu-a1, port: 22}\n"
        f"ssh:\n  config: {ssh_config}\n  user: llmops\n  known_hosts: kh\n"
        "  identity_files: []\n  connect_timeout: 3s\n"
    )
    config = load_config(path)
    target = ssh_target(config, config.nodes[0])
    assert (target.user, target.port, target.known_hosts) == ("llmops", 22, tmp_path / "kh")
    assert (target.identity_files, target.connect_timeout_s, target.keepalive_s) == ((), 3.0, None)
    node = resolve(target).node
    assert (node.host, node.port, node.user, node.identity_files) == ("10.0.3.11", 22, "llmops", ())
