"""One systemd unit's journal on a simulated host: the lines ``journalctl -u UNIT`` prints.

Both kinds of demo host keep one (a node's ``vllm.service``, the gateway's ``llm-router``), so
their shells answer ``journalctl`` and ``systemctl status`` with the same code. It only keeps
lines; what a unit logs is the unit's business.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

_LINES = 200


@dataclass(frozen=True)
class JournalEntry:
    at: float  # wall-clock seconds, as journald stamps an entry
    line: str  # journalctl's default ("short") output line


class Journal:
    def __init__(self, host: str) -> None:
        self.host = host
        self.entries: deque[JournalEntry] = deque(maxlen=_LINES)
        self.total = 0  # entries ever logged: a follower knows what is new

    def log(self, identifier: str, message: str) -> None:
        """Append ``MMM DD HH:MM:SS HOST IDENTIFIER: MESSAGE`` (``identifier``: ``vllm[4001]``)."""
        now = time.time()
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
        self.entries.append(JournalEntry(now, f"{stamp} {self.host} {identifier}: {message}"))
        self.total += 1
