"""The wheel, installed as a bastion would install it: away from the source tree.

One wheel is built (from a copy of the tree, so no build/ or egg-info lands in the checkout)
and installed into a fresh venv under the test's temporary folder. The venv gets its
dependencies from the environment running the tests through a ``.pth`` line: a plain path
line adds that site-packages to ``sys.path`` *after* the venv's own, and does not run the
``.pth`` files in it, so the editable install of this checkout stays out. The tests check
that the imported packages are the venv's copies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("console", "screens", "backends", "runbooks")
# Not part of a source tree: caches, the venv, build outputs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _run(*args: str | Path, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, root / "src", ignore=_NOT_SOURCE)
    # No build isolation: the test environment's setuptools builds it, without the network.
    built = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        root / "dist",
        root / "src",
        cwd=root,
    )
    assert built.returncode == 0, built.stderr
    (path,) = (root / "dist").glob("llmops_console-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("bastion") / "venv"
    assert not venv.is_relative_to(REPO)
    # --without-pip: the running pip installs into it (``pip --python``), which saves ensurepip.
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=venv.parent,
    )
    assert installed.returncode == 0, installed.stderr
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv)
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site.stdout.strip()) / "test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv


def test_wheel_carries_every_data_file_of_the_packages(wheel: Path) -> None:
    """Whatever sits beside the code (the demo's nvidia-smi captures, future price tables or
    styles) is opened at run time, so it must ship: only Python caches stay behind."""
    listed = _run(
        "git", "ls-files", "--cached", "--others", "--exclude-standard", *PACKAGES, cwd=REPO
    )
    assert listed.returncode == 0, listed.stderr
    data = {name for name in listed.stdout.splitlines() if not name.endswith(".py")}
    assert "console/demo/h100-query-load.csv" in data
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert data - shipped == set()


def test_installed_wheel_runs_status_on_the_demo_from_anywhere(venv: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A short window: the test is about the install, not about the figures.
    status = _run(
        venv / "bin" / "llmops", "status", "--demo", "--json", "--window", "2s", cwd=elsewhere
    )
    assert status.returncode in (0, 1), status.stderr  # 1: a source failed, still a report
    report = json.loads(status.stdout)
    assert {e["name"] for e in report["endpoints"]} >= {"chat-primary", "chat-large"}
    nodes = {node["name"]: node for node in report["nodes"]}
    assert sorted(nodes) == ["gpu-a1", "gpu-a2", "gpu-a3", "gpu-a4"]
    for node in nodes.values():
        # The demo nodes answer from the H100 capture the wheel ships as package data.
        names = {gpu["reading"]["name"] for gpu in node["gpus"]}
        assert len(node["gpus"]) == 8 and names == {"NVIDIA H100 80GB HBM3"}, node["name"]


def test_the_venv_imports_its_own_copy(venv: Path, tmp_path: Path) -> None:
    """Not the checkout's: the generic names console, screens and backends resolve inside
    the venv, and the checkout is nowhere on the path."""
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import os, sys, console, screens, backends, console.demo.h100\n"
        "print(console.__file__, screens.__file__, backends.__file__, sep='\\n')\n"
        f"print(any(p and os.path.realpath(p) == {str(REPO)!r} for p in sys.path))",
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    *files, repo_on_path = where.stdout.split()
    assert all(Path(f).is_relative_to(venv) for f in files), files
    assert repo_on_path == "False"
