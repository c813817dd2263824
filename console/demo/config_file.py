"""The console config.yaml that points at a running demo fleet.

Follows the schema console/config.py loads (ssh, poll, nodes, endpoints, alerts); holds no
secret, only the name of the environment variable with the backup provider's key. It writes
one file and knows nothing of servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from console.demo.engine_args import ARGS_FILE
from console.demo.engine_service import UNIT
from console.demo.http_server import HOST
from console.demo.ssh_server import USER

# AWS p5.48xlarge (8 x H100) on-demand list price at launch, $98.32/h, per GPU.
COST_PER_GPU_HOUR_USD = 12.29
BACKUP_KEY_ENV = "LLMOPS_DEMO_BACKUP_KEY"
BACKUP_MODEL = "gpt-4o-mini"
_PROBE = {
    "every": "5s",
    "prompt": "Reply with the single word: ok",
    "max_tokens": 16,
    "timeout": "10s",
}


@dataclass(frozen=True)
class NodeEntry:
    name: str
    ssh_port: int
    http_port: int
    gpus: int


@dataclass(frozen=True)
class EndpointEntry:
    name: str
    model: str
    nodes: tuple[NodeEntry, ...]  # the first one's engine is the endpoint's base URL


def write_config(
    path: Path,
    *,
    store: Path,
    known_hosts: Path,
    identity_file: Path,
    nodes: Sequence[NodeEntry],
    endpoints: Sequence[EndpointEntry],
    backup_port: int,
) -> None:
    config = {
        "environment": "demo",
        "store": str(store),
        "ssh": {
            "user": USER,
            "known_hosts": str(known_hosts),
            "identity_files": [str(identity_file)],
            "connect_timeout": "5s",
            "keepalive": "15s",
        },
        "poll": {"gpus": "2s", "engine": "2s", "max_backoff": "30s", "stale_after_polls": 2},
        "nodes": [_node(n) for n in nodes],
        "endpoints": [
            *(
                {
                    "name": e.name,
                    "kind": "openai",
                    "base_url": f"http://{HOST}:{e.nodes[0].http_port}/v1",
                    "model": e.model,
                    "nodes": [n.name for n in e.nodes],
                    "probe": dict(_PROBE),
                }
                for e in endpoints
            ),
            {
                "name": "chat-backup",
                "kind": "openai",
                "base_url": f"http://{HOST}:{backup_port}/v1",
                "model": BACKUP_MODEL,
                "api_key_env": BACKUP_KEY_ENV,
                "price": {"input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.60},
                "probe": dict(_PROBE),
            },
        ],
        "alerts": {
            # End-to-end P95 of healthy demo traffic is ~4 s (8B) and ~8 s (70B) for its long
            # answers: 10 s stays quiet until a latency spike (3x) on one of their nodes.
            "p95_latency": "10s",
            "ttft_p95": "1.5s",
            "error_rate_pct": 5,
            "gpu_temp_c": 85,
            "kv_cache_pct": 90,
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _node(node: NodeEntry) -> dict:
    return {
        "name": node.name,
        "host": HOST,
        "port": node.ssh_port,
        "gpus": node.gpus,
        "cost_per_hour_usd": round(COST_PER_GPU_HOUR_USD * node.gpus, 2),
        "engine": {
            "kind": "vllm",
            "url": f"http://{HOST}:{node.http_port}",
            "service": UNIT,
            "args_file": ARGS_FILE,
            "restart_command": f"sudo systemctl restart {UNIT}",
        },
    }
