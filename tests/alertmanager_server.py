"""A real ``prometheus-alertmanager`` on 127.0.0.1 for the alert and silence tests.

Skipped where the binary is not installed, unless LLMOPS_REQUIRE_ALERTMANAGER=1 (``.ci/run``
installs Debian's ``prometheus-alertmanager`` and sets it): there a missing binary is an
error, so the tests against it can never be skipped silently. One null receiver (nothing is
sent anywhere) and no clustering (``--cluster.listen-address=``): a lone instance that is
ready at once.
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

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
HAVE_ALERTMANAGER = os.access(ALERTMANAGER, os.X_OK)
if not HAVE_ALERTMANAGER and os.environ.get("LLMOPS_REQUIRE_ALERTMANAGER") == "1":
    raise RuntimeError(
        "LLMOPS_REQUIRE_ALERTMANAGER=1 but the prometheus-alertmanager binary is not installed"
    )
needs_alertmanager = pytest.mark.skipif(
    not HAVE_ALERTMANAGER, reason="prometheus-alertmanager is not installed (.ci/run installs it)"
)

CONFIG = {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}


@contextmanager
def running_alertmanager(workdir: Path) -> Iterator[str]:
    """Start Alertmanager in ``workdir``; yield its URL once ``/-/ready`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    argv = [
        ALERTMANAGER,
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with serving("alertmanager", argv, port, workdir / "alertmanager.log") as url:
        yield url
