"""The HTTP routes of one simulated vLLM 0.33 server: health, version, models, metrics, chat.

Answers from the node's :class:`EngineService`: while the engine is (re)starting /health is 503
and the engine routes refuse; chat replies are paced with the engine's current TTFT and
inter-token estimates (so latency-spike and batch settings show in real requests) and are
accounted in its metrics; an engine on a bad revision fails its share of them with a 500.
It never changes the engine's settings, only its accounts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable

from console.demo.completions import (
    VLLM_STREAM,
    BadRequest,
    Reply,
    complete,
    error_response,
    make_reply,
    paced,
    parse_chat_request,
    sse_events,
    stream_response,
)
from console.demo.engine_metrics import CONTENT_TYPE
from console.demo.engine_service import VLLM_VERSION, EngineService
from console.demo.engine_sim import EngineSim
from console.demo.faults import RETRY_AFTER_S, ActiveFaults
from console.demo.http_server import HttpRequest, HttpResponse, StreamAborted

_ROUTES = {
    "/health": "GET",
    "/version": "GET",
    "/metrics": "GET",
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
}


class VllmApi:
    def __init__(
        self, service: EngineService, faults: ActiveFaults, next_id: Callable[[], str]
    ) -> None:
        self._service = service
        self._faults = faults
        self._next_id = next_id

    async def handle(self, request: HttpRequest) -> HttpResponse:
        method = _ROUTES.get(request.path)
        if method is None:
            return HttpResponse.json(404, {"detail": "Not Found"})
        if request.method != method:
            return HttpResponse.json(405, {"detail": "Method Not Allowed"})
        engine = self._service.engine
        if request.path == "/version":
            return HttpResponse.json(200, {"version": VLLM_VERSION})
        if request.path == "/health":
            return HttpResponse(200 if engine is not None else 503)
        if engine is None:
            return error_response(
                503,
                "The engine is starting up; try again shortly.",
                "ServiceUnavailableError",
                code=503,
            )
        if request.path == "/metrics":
            # ?name[]=...: only those samples, as prometheus_client's exposition serves them.
            names = request.query.get("name[]", ())
            body = engine.metrics.render(names)
            return HttpResponse(200, body, {"content-type": CONTENT_TYPE})
        if request.path == "/v1/models":
            return HttpResponse.json(200, _models(engine))
        return await self._chat(engine, request)

    async def _chat(self, engine: EngineSim, request: HttpRequest) -> HttpResponse:
        status = self._faults.chat_error_status
        if status == 429:
            headers = {"retry-after": str(RETRY_AFTER_S), "x-ratelimit-remaining-requests": "0"}
            return error_response(
                429, "Too many requests; retry later.", "RateLimitError", code=429, headers=headers
            )
        if status is not None:
            return error_response(
                status, "Service temporarily unavailable.", "ServiceUnavailableError", code=status
            )
        try:
            chat = parse_chat_request(request.body)
        except BadRequest as exc:
            return error_response(400, str(exc), "BadRequestError", code=400)
        args = engine.args
        if chat.model not in args.served_model_names:
            return error_response(
                404,
                f"The model `{chat.model}` does not exist.",
                "NotFoundError",
                param="model",
                code=404,
            )
        if chat.prompt_tokens + (chat.max_tokens or 0) > engine.max_model_len:
            return error_response(
                400,
                f"This model's maximum context length is {engine.max_model_len} tokens. However, "
                f"you requested {chat.prompt_tokens + (chat.max_tokens or 0)} tokens.",
                "BadRequestError",
                code=400,
            )
        max_tokens = chat.max_tokens or engine.max_model_len - chat.prompt_tokens
        if engine.fails_next():  # a bad revision fails its share of requests
            engine.record_external_error(chat.prompt_tokens, max_tokens)
            return error_response(
                500,
                "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                "InternalServerError",
                code=500,
            )
        reply = make_reply(
            chat,
            args.served_model_name,
            self._next_id(),
            int(time.time()),
            blowup=self._faults.token_blowup,
        )
        tokens = self._generate(engine, reply, max_tokens)
        if chat.stream:
            return stream_response(sse_events(reply, tokens, chat.include_usage, VLLM_STREAM), {})
        return await complete(reply, tokens)

    async def _generate(
        self, engine: EngineSim, reply: Reply, max_tokens: int
    ) -> AsyncGenerator[str, None]:
        """The reply's tokens at the engine's pace, counted in its metrics when complete."""
        ttft_s = engine.estimate_ttft_s(reply.prompt_tokens)
        gaps: list[float] = []

        def next_gap() -> float:
            gaps.append(engine.estimate_itl_s())
            return gaps[-1]

        engine.external_running += 1
        try:
            async for token in paced(reply, ttft_s, next_gap):
                if self._service.engine is not engine:
                    raise StreamAborted  # the engine restarted under this request
                yield token
        finally:
            engine.external_running -= 1
        engine.record_external(reply.prompt_tokens, ttft_s, gaps, reply.finish_reason, max_tokens)


def _models(engine: EngineSim) -> dict:
    created = int(time.time())
    cards = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": engine.args.model,
            "parent": None,
            "max_model_len": engine.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{index}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for index, name in enumerate(engine.args.served_model_names)
    ]
    return {"object": "list", "data": cards}
