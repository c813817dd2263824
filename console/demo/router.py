"""The gateway's router: an OpenAI-compatible proxy that spreads each route over its upstreams.

POST /v1/chat/completions with ``model`` set to a route picks one of the route's deployments
by the weights last loaded (weighted random from the fleet's RNG; smooth weighted round robin
without one), forwards the request to its ``api_base`` with ``model`` rewritten to the name
the upstream knows and the upstream's API key, and passes the answer through (streams chunk
by chunk) with an ``x-llm-router-upstream`` header naming the deployment. A deployment that
cannot be reached is skipped for another of the route, as LiteLLM's router retries; a route
whose weights are all 0 answers 503, an unknown one 404, both with OpenAI's error body. GET
/v1/models lists the routes, GET /health says the router is up. While the router is not
running (a restart that found a broken file) it drops every connection, as a dead process
would. What is loaded, and when, is the unit's business (:mod:`console.demo.gateway`).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import AsyncGenerator

import httpx

from console.demo.completions import error_response
from console.demo.http_server import HttpRequest, HttpResponse, StreamAborted
from console.demo.router_config import Deployment, RouterTable, resolve_key
from console.demo.weighted import WeightedPicker

UPSTREAM_HEADER = "x-llm-router-upstream"
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
# Headers that describe one hop: the router's own server sets them for its answer.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)
_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class Router:
    def __init__(self, rng: random.Random | None) -> None:
        self._rng = rng
        self.table: RouterTable | None = None  # None: the router is not running
        # Requests nothing could serve: real ones answered 502/503 and simulated arrivals
        # dropped for want of a node with a weight (see DemoFleet._tick).
        self.failed_requests = 0
        self._pickers: dict[str, WeightedPicker] = {}
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # trust_env off: a proxy set for the user's shell must not sit between demo servers.
        self._client = httpx.AsyncClient(timeout=_TIMEOUT, trust_env=False)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def load(self, table: RouterTable | None) -> None:
        """Route by ``table`` from now on (None: stop routing); round-robin state starts over."""
        self.table = table
        self._pickers = {}

    def choose(self, route: str, exclude: frozenset[str] = frozenset()) -> Deployment | None:
        """The deployment of ``route`` the next request goes to (None: every weight is 0)."""
        table = self.table
        deployments = table.routes.get(route, ()) if table is not None else ()
        options = [(d.name, d.weight) for d in deployments if d.name not in exclude]
        picker = self._pickers.setdefault(route, WeightedPicker(self._rng))
        name = picker.pick(options)
        return next((d for d in deployments if d.name == name), None)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        table = self.table
        if table is None:
            raise StreamAborted  # nothing listens behind the port: the connection just drops
        if request.path in _CHAT_PATHS and request.method == "POST":
            return await self._chat(table, request)
        if (request.method, request.path) == ("GET", "/health"):
            return HttpResponse.json(200, {"status": "healthy", "routes": sorted(table.routes)})
        if (request.method, request.path) in (("GET", "/v1/models"), ("GET", "/models")):
            created = int(time.time())
            data = [
                {"id": route, "object": "model", "created": created, "owned_by": "openai"}
                for route in table.routes
            ]
            return HttpResponse.json(200, {"object": "list", "data": data})
        return HttpResponse.json(404, {"detail": "Not Found"})

    async def _chat(self, table: RouterTable, request: HttpRequest) -> HttpResponse:
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
        route = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(route, str):
            return error_response(
                400, "request body must be a JSON object with a 'model'", "invalid_request_error"
            )
        if route not in table.routes:
            known = ", ".join(table.routes)
            return error_response(
                404,
                f"Invalid model name passed in model={route}. Routes: {known}",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        tried: set[str] = set()
        while (deployment := self.choose(route, frozenset(tried))) is not None:
            response = await self._forward(deployment, body)
            if response is not None:
                return response
            tried.add(deployment.name)
        self.failed_requests += 1
        if tried:
            return error_response(
                502,
                f"No deployment of model={route} could be reached (tried: {', '.join(tried)})",
                "server_error",
                code=502,
            )
        return error_response(
            503,
            f"No deployments available for selected model={route}: every weight is 0",
            "server_error",
            code=503,
        )

    async def _forward(self, deployment: Deployment, body: dict) -> HttpResponse | None:
        """The upstream's answer, or None when it cannot be reached."""
        client = self._client
        assert client is not None, "open() the router before it serves"
        headers = {"content-type": "application/json"}
        key = resolve_key(deployment.api_key, os.environ)
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        upstream = client.build_request(
            "POST",
            deployment.api_base + "/chat/completions",
            content=json.dumps({**body, "model": deployment.model}).encode(),
            headers=headers,
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.TransportError:  # refused, reset or timed out before an answer
            return None
        passed = {k.lower(): v for k, v in response.headers.items()}
        passed = {k: v for k, v in passed.items() if k not in _HOP_HEADERS}
        passed[UPSTREAM_HEADER] = deployment.name
        if passed.get("content-type", "").startswith("text/event-stream"):
            return HttpResponse(response.status_code, headers=passed, stream=_relay(response))
        try:
            content = await response.aread()
        except httpx.TransportError:
            return None
        finally:
            await response.aclose()
        return HttpResponse(response.status_code, content, passed)


async def _relay(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The upstream's stream as it comes; if the upstream dies mid-stream, so does ours."""
    try:
        async for chunk in response.aiter_raw():
            if chunk:  # an empty chunk would end our own chunked answer early
                yield chunk
    except httpx.TransportError as exc:
        raise StreamAborted from exc
    finally:
        await response.aclose()
