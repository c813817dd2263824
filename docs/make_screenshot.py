"""Save docs/overview.svg: the console itself, on the embedded demo fleet, at 100x30.

.venv/bin/python docs/make_screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.app import LlmopsApp  # noqa: E402
from console.config import load_config  # noqa: E402
from console.demo import DemoFleet  # noqa: E402
from console.hub import Hub  # noqa: E402
from console.store import Store  # noqa: E402

WARM_UP_S = 20  # enough polls for the latency windows and sparklines to fill


async def main() -> None:
    with tempfile.TemporaryDirectory() as workdir, DemoFleet(Path(workdir), seed=7) as fleet:
        fleet.start()
        config = load_config(fleet.config_path)
        hub = Hub(config, Store(Path(workdir) / "screenshot.db"))
        app = LlmopsApp(hub, environment=config.environment, faults=fleet)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(WARM_UP_S / 2)
            fleet.inject("latency-spike", "gpu-a3")
            await pilot.pause(WARM_UP_S / 2)
            path = app.save_screenshot("overview.svg", str(ROOT / "docs"))
    print(path)


if __name__ == "__main__":
    asyncio.run(main())
