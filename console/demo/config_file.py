"""The console config.yaml that points at a running demo fleet.

Follows the schema console/config.py loads (ssh, poll, nodes, endpoints, routers, alerts);
holds no secret, only the names of the environment variables with the providers' keys. The
gateway is a router, not a node: it has no GPU and no engine. It writes one file and knows
nothing of servers. Beside it, :func:`write_prometheus_config` writes a scrape config with
which a real Prometheus reads the whole demo, labelled by node as the console expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from console.demo.engine_args import ARGS_FILE
from console.demo.engine_service import UNIT
from console.demo.http_server import HOST
from console.demo.router_config import ROUTE_API, ROUTER_FILE, ROUTER_UNIT
from console.demo.ssh_server import USER

# AWS p5.48xlarge (8 x H100) on-demand list price at launch, $98.32/h, per GPU.
COST_PER_GPU_HOUR_USD = 12.29
BACKUP_KEY_ENV = "LLMOPS_DEMO_BACKUP_KEY"
PRIMARY_KEY_ENV = "LLMOPS_DEMO_PRIMARY_KEY"
API_MODEL = "gpt-4o-mini"
# The router's names for the two providers, and the console's endpoints that probe them.
PRIMARY_UPSTREAM = "primary-api"
BACKUP_UPSTREAM = "backup-api"
PRIMARY_ENDPOINT = "chat-api"
BACKUP_ENDPOINT = "chat-backup"
GATEWAY_ENDPOINT = "gateway"
_API_PRICE = {"input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.60}  # gpt-4o-mini's list price
_PROBE_EVERY = "5s"
_PROBE = {
    "every": _PROBE_EVERY,
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
    revision: str  # what the node started on: the revision a rollback returns to
    dcgm_port: int  # its dcgm-exporter's /metrics


@dataclass(frozen=True)
class EndpointEntry:
    name: str
    model: str
    nodes: tuple[NodeEntry, ...]  # the first one's engine is the endpoint's base URL


@dataclass(frozen=True)
class RouterEntry:
    name: str
    ssh_port: int
    http_port: int
    nodes: tuple[str, ...]  # the nodes behind its chat route


def write_config(
    path: Path,
    *,
    store: Path,
    known_hosts: Path,
    identity_file: Path,
    nodes: Sequence[NodeEntry],
    endpoints: Sequence[EndpointEntry],
    primary_port: int,
    backup_port: int,
    router: RouterEntry,
) -> None:
    config = {
        "environment": "demo",
        "store": str(store),
        "ssh": {
            # The engineer's ~/.ssh/config (a Host * ProxyJump, say) is not the demo's.
            "config": "none",
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
            _api(PRIMARY_ENDPOINT, primary_port, PRIMARY_KEY_ENV, every="2s"),
            _api(BACKUP_ENDPOINT, backup_port, BACKUP_KEY_ENV, every=_PROBE_EVERY),
            {
                # The router holds the providers' keys: its clients need none.
                "name": GATEWAY_ENDPOINT,
                "kind": "openai",
                "base_url": f"http://{HOST}:{router.http_port}/v1",
                "model": ROUTE_API,
                "probe": {**_PROBE, "every": "1s", "timeout": "5s"},
            },
        ],
        "routers": [_router(router)],
        "alerts": {
            # End-to-end P95 of healthy demo traffic is ~4 s (8B) and ~8 s (70B) for its long
            # answers: 10 s stays quiet until a latency spike (3x) on one of their nodes.
            "p95_latency": "10s",
            "ttft_p95": "1.5s",
            "error_rate_pct": 5,
            "gpu_temp_c": 85,
            "kv_cache_pct": 90,
            # Drill-sized rules (for: 10 s, not a minute), each naming the runbook that
            # answers it: a fault injected into the demo opens an incident within seconds.
            "rules": [
                {
                    "name": "demo.itl-high",
                    "figure": "itl_p95",
                    "node": "*",
                    "above": "75ms",
                    "for": "10s",
                    "window": "20s",
                    "severity": "page",
                    "runbook": "latency-spike",
                },
                {
                    "name": "demo.provider-errors",
                    "figure": "error_pct",
                    "endpoint": PRIMARY_ENDPOINT,
                    "above": 20,
                    "for": "10s",
                    "window": "15s",
                    "severity": "page",
                    "runbook": "provider-failover",
                },
                {
                    "name": "demo.model-changed",
                    "figure": "model_changed",
                    "endpoint": "*",
                    "above": 0.5,
                    "for": "10s",
                    "severity": "ticket",
                    "runbook": "model-rollback",
                },
                {
                    "name": "demo.node-stale",
                    "figure": "stale",
                    "node": "*",
                    "for": "10s",
                    "severity": "page",
                },
            ],
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
            "pinned_revision": node.revision,
        },
    }


def _api(name: str, port: int, key_env: str, every: str) -> dict:
    return {
        "name": name,
        "kind": "openai",
        "base_url": f"http://{HOST}:{port}/v1",
        "model": API_MODEL,
        "api_key_env": key_env,
        "price": dict(_API_PRICE),
        "probe": {**_PROBE, "every": every},
    }


def _router(router: RouterEntry) -> dict:
    upstreams: dict[str, dict[str, str | bool]] = {n: {"node": n} for n in router.nodes}
    upstreams[PRIMARY_UPSTREAM] = {"endpoint": PRIMARY_ENDPOINT}
    upstreams[BACKUP_UPSTREAM] = {"endpoint": BACKUP_ENDPOINT, "backup": True}
    return {
        "name": router.name,
        "host": HOST,
        "port": router.ssh_port,
        "file": ROUTER_FILE,
        "format": "yaml",
        # A LiteLLM proxy config: deployments in model_list, named and weighted inside.
        "list_path": "model_list",
        "name_key": "model_info.id",
        "weight_key": "litellm_params.weight",
        "route_key": "model_name",
        "reload_command": f"sudo systemctl reload {ROUTER_UNIT.removesuffix('.service')}",
        "endpoint": GATEWAY_ENDPOINT,
        "upstreams": upstreams,
    }


PROMETHEUS_SCRAPE = "2s"  # as often as the console polls the demo


def write_prometheus_config(path: Path, nodes: Sequence[NodeEntry]) -> None:
    """``prometheus --config.file=PATH`` scrapes every node's engine (job vllm) and
    dcgm-exporter (job dcgm), each target labelled ``node: NAME``: the label the console's
    ``prometheus.node_label`` matches (on a real fleet, a relabel rule sets it)."""

    def targets(port_of: str) -> list[dict]:
        return [
            {"targets": [f"{HOST}:{getattr(n, port_of)}"], "labels": {"node": n.name}}
            for n in nodes
        ]

    config = {
        "global": {"scrape_interval": PROMETHEUS_SCRAPE, "scrape_timeout": PROMETHEUS_SCRAPE},
        "scrape_configs": [
            {"job_name": "vllm", "static_configs": targets("http_port")},
            {"job_name": "dcgm", "static_configs": targets("dcgm_port")},
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
