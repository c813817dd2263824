"""A real ``prometheus`` binary on 127.0.0.1 for the tests that compare figures with it.

Skipped where the binary is not installed, unless LLMOPS_REQUIRE_PROMETHEUS=1 (``.ci/run``
installs Debian's ``prometheus`` and sets it): there a missing binary is an error, so the
comparison can never be skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

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
    log_path = workdir / "prometheus.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready: {log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
