"""The embedded demo fleet (``llmops demo``): simulated GPU nodes the console connects to.

Each node is a real SSH server and a vLLM-compatible HTTP server on 127.0.0.1, reached with
the same code the console uses for real nodes; a gateway whose router spreads traffic by the
weights in its file, two API providers (primary and backup), a traffic generator and fault
injection complete it. Start it with :class:`DemoFleet` and point the console at the
config.yaml it writes. Nothing here knows about Textual.
"""

from __future__ import annotations

from console.demo.faults import FAULTS, FaultSpec, parse_fault
from console.demo.fleet import DemoFleet

__all__ = ["FAULTS", "DemoFleet", "FaultSpec", "parse_fault"]
