"""Shared test set-up: a fixed time zone, isolated XDG folders, fixture paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Times on screen are local; pin the zone so snapshots are the same everywhere.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(autouse=True)
def isolated_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the real ~/.config or ~/.local/share from a test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
