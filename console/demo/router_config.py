"""The gateway's router configuration: a LiteLLM proxy ``config.yaml``, parsed and rendered.

The file's ``model_list`` holds deployments; each names the route clients ask for
(``model_name``), the upstream that serves it (``litellm_params``: ``model``, ``api_base``,
``api_key``, ``weight``) and the deployment's own name (``model_info.id``). Parsing checks what
the router needs and says what is wrong in one line, as a reload's error would; other keys
(``router_settings``, ``general_settings``, ...) are left alone. Weights follow LiteLLM's
simple-shuffle: a route where no deployment sets a weight splits evenly; where some do, the
others weigh 0. It only reads and writes text: routing requests is :mod:`console.demo.router`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import yaml

ROUTER_FILE = "/etc/llm-router/config.yaml"
ROUTER_UNIT = "llm-router.service"
ROUTE_CHAT = "chat"  # the self-hosted small model, on the GPU nodes
ROUTE_API = "chat-api"  # the API providers, primary and backup
_ENV_PREFIX = "os.environ/"  # LiteLLM's way to name an environment variable holding a secret


class RouterConfigError(ValueError):
    """The file would be refused by the router; the message says where and why, in one line."""


@dataclass(frozen=True)
class Deployment:
    name: str  # model_info.id
    route: str  # model_name
    model: str  # litellm_params.model without its provider prefix: what the upstream is asked
    api_base: str
    api_key: str | None  # the key itself, or os.environ/NAME
    weight: float


@dataclass(frozen=True)
class RouterTable:
    """The routes a loaded configuration defines, each with its deployments in file order."""

    routes: dict[str, tuple[Deployment, ...]]

    def weights(self, route: str) -> dict[str, float]:
        return {d.name: d.weight for d in self.routes.get(route, ())}

    @property
    def deployments(self) -> int:
        return sum(len(d) for d in self.routes.values())


@dataclass(frozen=True)
class Upstream:
    """One deployment the demo writes into the first configuration."""

    name: str
    route: str
    model: str  # with its provider prefix, e.g. openai/gpt-4o-mini
    api_base: str
    weight: float
    api_key_env: str | None = None


def render_router_config(upstreams: Sequence[Upstream]) -> str:
    model_list = []
    for u in upstreams:
        params: dict[str, object] = {"model": u.model, "api_base": u.api_base}
        if u.api_key_env is not None:
            params["api_key"] = _ENV_PREFIX + u.api_key_env
        params["weight"] = u.weight
        model_list.append(
            {"model_name": u.route, "litellm_params": params, "model_info": {"id": u.name}}
        )
    config = {"model_list": model_list, "router_settings": {"routing_strategy": "simple-shuffle"}}
    return yaml.safe_dump(config, sort_keys=False)


def parse_router_config(text: str) -> RouterTable:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RouterConfigError(f"not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict) or "model_list" not in data:
        raise RouterConfigError("no model_list (expected a list of deployments)")
    entries = data["model_list"]
    if not isinstance(entries, list) or not entries:
        raise RouterConfigError("model_list is not a list of deployments")
    routes: dict[str, list[Deployment]] = {}
    weighted: set[str] = set()  # routes where some deployment sets a weight
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        deployment, has_weight = _entry(f"model_list[{i}]", entry)
        if deployment.name in seen:
            raise RouterConfigError(
                f"model_list[{i}]: model_info.id {deployment.name!r} is used twice"
            )
        seen.add(deployment.name)
        routes.setdefault(deployment.route, []).append(deployment)
        if has_weight:
            weighted.add(deployment.route)
    return RouterTable(
        {
            route: tuple(d if route in weighted else replace(d, weight=1.0) for d in deployments)
            for route, deployments in routes.items()
        }
    )


def _entry(where: str, entry: object) -> tuple[Deployment, bool]:
    """One deployment (weight 0 when it sets none) and whether it set a weight."""
    if not isinstance(entry, dict):
        raise RouterConfigError(f"{where} is not a mapping")
    route = entry.get("model_name")
    params = entry.get("litellm_params")
    info = entry.get("model_info")
    if not isinstance(route, str) or not route:
        raise RouterConfigError(f"{where}: no model_name")
    if not isinstance(params, dict):
        raise RouterConfigError(f"{where}: no litellm_params")
    name = info.get("id") if isinstance(info, dict) else None
    if not isinstance(name, str) or not name:
        raise RouterConfigError(f"{where}: no model_info.id")
    model, base, key = params.get("model"), params.get("api_base"), params.get("api_key")
    if not isinstance(model, str) or not model:
        raise RouterConfigError(f"{where}: no litellm_params.model")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise RouterConfigError(f"{where}: no litellm_params.api_base (expected an http(s) URL)")
    if key is not None and not isinstance(key, str):
        raise RouterConfigError(f"{where}: litellm_params.api_key is not a string")
    weight = params.get("weight")
    number = isinstance(weight, int | float) and not isinstance(weight, bool)
    if weight is not None and not (number and math.isfinite(weight) and weight >= 0):
        raise RouterConfigError(f"{where}: litellm_params.weight {weight!r} is not a number >= 0")
    # LiteLLM's provider prefix: what follows it is the model name the upstream knows.
    upstream_model = model.split("/", 1)[1] if "/" in model else model
    deployment = Deployment(name, route, upstream_model, base.rstrip("/"), key, float(weight or 0))
    return deployment, weight is not None


def resolve_key(api_key: str | None, environ: Mapping[str, str]) -> str | None:
    """The key an ``api_key`` value stands for (``os.environ/NAME``: that variable's value)."""
    if api_key is not None and api_key.startswith(_ENV_PREFIX):
        return environ.get(api_key.removeprefix(_ENV_PREFIX))
    return api_key
