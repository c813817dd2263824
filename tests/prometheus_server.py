"""A real ``prometheus`` binary on 127.0.0.1 for the tests that compare figures with it.

Skipped where the binary is not installed, unless LLMOPS_REQUIRE_PROMETHEUS=1 (``.ci/run``
installs Debian's ``prometheus`` and sets it): there a missing binary is an error, so the
comparison can never be skipped silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.ready_server import serving
from tests.sshd import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
HAVE_PROMETHEUS = os.access(PROMETHEUS, os.X_OK)
if not HAVE_PROMETHEUS and os.environ.get("LLMOPS_REQUIRE_PROMETHEUS") == "1":
    raise RuntimeError("LLMOPS_REQUIRE_PROMETHEUS=1 but the prometheus binary is not installed")
needs_prometheus = pytest.mark.skipif(
    not HAVE_PROMETHEUS, reason="prometheus is not installed (.ci/run installs it)"
)


@contextmanager
def running_prometheus(config: dict, workdir: Path) -> Iterator[str]:
    """Start prometheus on ``config`` (a prometheus.yml as data); yield its URL once ready."""
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with serving("prometheus", argv, port, workdir / "prometheus.log") as url:
        yield url
