"""An API provider: OpenAI-style, with bearer-key auth and rate-limit headers.

The demo runs two, each its own instance with its own key and faults: the primary API and
the backup the router fails over to.

Serves ``/v1/models`` and ``/v1/chat/completions`` (streaming with usage) for its models, with
an API's latency (a few hundred ms to the first token) and OpenAI's error bodies and headers
for 401, 404, 429 and 503. Like OpenAI it answers a model alias with the dated snapshot behind
it (asked for ``gpt-4o-mini``, it says ``gpt-4o-mini-2024-07-18``), and a model-version-change
moves the aliases to newer snapshots. It must not know about nodes or engines.
"""

from __future__ import annotations

import hmac
import random
import time
from collections.abc import Callable

from console.demo.completions import (
    OPENAI_STREAM,
    BadRequest,
    complete,
    error_response,
    make_reply,
    paced,
    parse_chat_request,
    sse_events,
    stream_response,
)
from console.demo.faults import RETRY_AFTER_S, ActiveFaults
from console.demo.http_server import HttpRequest, HttpResponse

# OpenAI's aliases and the dated snapshots that answer for them (as its API does).
SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
}
# Where model-version-change moves the aliases. gpt-4o-2024-11-20 is a real later snapshot;
# OpenAI has published none after gpt-4o-mini-2024-07-18, so that date is made up.
NEXT_SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2025-04-14",
    "gpt-4o": "gpt-4o-2024-11-20",
}
MODELS = tuple(SNAPSHOTS)
REQUESTS_PER_MIN = 10_000
TOKENS_PER_MIN = 10_000_000
_TTFT_S = 0.25
_ITL_S = 0.012


class ProviderApi:
    def __init__(
        self,
        api_key: str,
        faults: ActiveFaults,
        rng: random.Random | None,
        next_id: Callable[[], str],
    ) -> None:
        self._api_key = api_key
        self._faults = faults
        self._rng = rng  # None: fixed latencies
        self._next_id = next_id
        self._window_start = time.monotonic()
        self._window_requests = 0
        self._window_tokens = 0
        self.snapshots = dict(SNAPSHOTS)  # alias -> the dated model that answers for it now

    def change_version(self) -> str:
        """Point every alias at its next snapshot (model-version-change); returns the new name."""
        self.snapshots = dict(NEXT_SNAPSHOTS)
        return self.snapshots[MODELS[0]]

    def roll_back(self) -> None:
        self.snapshots = dict(SNAPSHOTS)

    def _served(self) -> dict[str, str]:
        """Every name a request may use -> the model that answers: aliases and snapshots."""
        dated = {name: name for name in (*SNAPSHOTS.values(), *self.snapshots.values())}
        return {**dated, **self.snapshots}

    async def handle(self, request: HttpRequest) -> HttpResponse:
        denied = self._check_key(request.headers.get("authorization", ""))
        if denied is not None:
            return denied
        route = (request.method, request.path)
        if route == ("GET", "/v1/models"):
            data = [
                {"id": m, "object": "model", "created": 1721172741, "owned_by": "system"}
                for m in self._served()
            ]
            return HttpResponse.json(200, {"object": "list", "data": data})
        if route == ("POST", "/v1/chat/completions"):
            return await self._chat(request)
        return error_response(
            404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
        )

    def _check_key(self, authorization: str) -> HttpResponse | None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if not hmac.compare_digest(key.encode(), self._api_key.encode()):
            return error_response(
                401,
                f"Incorrect API key provided: {key[:3]}...{key[-4:]}.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None

    async def _chat(self, request: HttpRequest) -> HttpResponse:
        status = self._faults.chat_error_status
        if status == 429:
            return error_response(
                429,
                f"Rate limit reached for requests per min (RPM): Limit {REQUESTS_PER_MIN}, "
                f"Used {REQUESTS_PER_MIN}, Requested 1. Please try again in {RETRY_AFTER_S}s.",
                "requests",
                code="rate_limit_exceeded",
                headers={
                    "retry-after": str(RETRY_AFTER_S),
                    "x-ratelimit-limit-requests": str(REQUESTS_PER_MIN),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{RETRY_AFTER_S}s",
                },
            )
        if status is not None:
            return error_response(
                status,
                "The engine is currently overloaded, please try again later.",
                "server_error",
            )
        try:
            chat = parse_chat_request(request.body)
        except BadRequest as exc:
            return error_response(400, str(exc), "invalid_request_error")
        served = self._served().get(chat.model)
        if served is None:
            return error_response(
                404,
                f"The model `{chat.model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                code="model_not_found",
            )
        reply = make_reply(chat, served, self._next_id(), int(time.time()), blowup=False)
        headers = self._rate_limit_headers(reply.prompt_tokens + len(reply.tokens))
        ttft_s = self._jitter(_TTFT_S)
        headers["openai-processing-ms"] = str(round(ttft_s * 1000))
        tokens = paced(reply, ttft_s, lambda: self._jitter(_ITL_S))
        if chat.stream:
            return stream_response(
                sse_events(reply, tokens, chat.include_usage, OPENAI_STREAM), headers
            )
        response = await complete(reply, tokens)
        response.headers.update(headers)
        return response

    def _rate_limit_headers(self, tokens: int) -> dict[str, str]:
        now = time.monotonic()
        if now - self._window_start >= 60:
            self._window_start, self._window_requests, self._window_tokens = now, 0, 0
        self._window_requests += 1
        self._window_tokens += tokens
        reset_ms = round((60 - (now - self._window_start)) * 1000)
        return {
            "x-ratelimit-limit-requests": str(REQUESTS_PER_MIN),
            "x-ratelimit-remaining-requests": str(REQUESTS_PER_MIN - self._window_requests),
            "x-ratelimit-reset-requests": f"{reset_ms}ms",
            "x-ratelimit-limit-tokens": str(TOKENS_PER_MIN),
            "x-ratelimit-remaining-tokens": str(TOKENS_PER_MIN - self._window_tokens),
            "x-ratelimit-reset-tokens": f"{reset_ms}ms",
            "x-request-id": f"req_{self._next_id().removeprefix('chatcmpl-')}",
        }

    def _jitter(self, seconds: float) -> float:
        return seconds if self._rng is None else seconds * self._rng.uniform(0.7, 1.6)
