"""Start a real server binary on 127.0.0.1 and wait until its ``/-/ready`` answers (the
Prometheus-family servers' readiness endpoint); stop it on the way out."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def serving(name: str, argv: Sequence[str], port: int, log_path: Path) -> Iterator[str]:
    """Run ``argv`` (listening on ``port``), its output in ``log_path``; yield its URL."""
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
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
                    raise RuntimeError(f"{name} did not become ready: {log_path.read_text()}")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)
