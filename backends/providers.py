"""Streaming probes against OpenAI-compatible and Anthropic endpoints.

A probe sends one small streaming chat request and measures time to first token at the
first *content* token (not at the response headers or the role-only first chunk), total
latency, token usage as the endpoint reports it, and rate-limit signals (429 or 503 with
``Retry-After``, as seconds or an HTTP-date, bounded). Durations come from a monotonic clock;
``started_at`` is wall time, for display. An error page is read only up to a bound, so a huge
or endless one costs neither memory nor the probe's deadline. API keys come from the
environment variable the config names and are sent only in the request header: every error
text passes through console.redact, so a key a server echoes never reaches a result.
Knows nothing of the UI or the hub.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from backends.engines import describe_http_error
from console.models import ProbeResult
from console.redact import redact

# Only the start of an error page is read: enough for any JSON error, never a whole HTML dump.
MAX_ERROR_BODY_BYTES = 64 * 1024
# A server asking for more than this is asking for longer than an on-call engineer can go
# without a fresh reading; the probe comes back after this at the latest.
MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class ProbeTarget:
    endpoint: str
    kind: str  # openai | anthropic
    base_url: str
    model: str
    prompt: str
    max_tokens: int
    timeout_s: float
    api_key_env: str | None = None


def _request(target: ProbeTarget, api_key: str | None) -> tuple[str, dict[str, str], dict]:
    base = target.base_url.rstrip("/")
    messages = [{"role": "user", "content": target.prompt}]
    if target.kind == "anthropic":
        headers = {"anthropic-version": "2023-06-01"}
        if api_key:
            headers["x-api-key"] = api_key
        body = {
            "model": target.model,
            "messages": messages,
            "max_tokens": target.max_tokens,
            "stream": True,
        }
        return f"{base}/messages", headers, body
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = {
        "model": target.model,
        "messages": messages,
        "max_tokens": target.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return f"{base}/chat/completions", headers, body


@dataclass
class _StreamState:
    first_token_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    stream_error: str | None = None


def _obj(value: object) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one: servers send odd shapes."""
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _message(error: object) -> str:
    return str(_obj(error).get("message") or error)[:120]


def _on_openai_event(event: dict[str, Any], state: _StreamState, now: float) -> None:
    state.model = str(event.get("model") or "") or state.model
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if _obj(_obj(choice).get("delta")).get("content") and state.first_token_at is None:
            state.first_token_at = now
    usage = _obj(event.get("usage"))
    if usage:
        state.prompt_tokens = _int(usage.get("prompt_tokens"))
        state.completion_tokens = _int(usage.get("completion_tokens"))
    if event.get("error"):
        state.stream_error = _message(event["error"])


def _on_anthropic_event(event: dict[str, Any], state: _StreamState, now: float) -> None:
    kind = event.get("type")
    if kind == "message_start":
        message = _obj(event.get("message"))
        state.model = str(message.get("model") or "") or state.model
        state.prompt_tokens = _int(_obj(message.get("usage")).get("input_tokens"))
    elif kind == "content_block_delta":
        if _obj(event.get("delta")).get("text") and state.first_token_at is None:
            state.first_token_at = now
    elif kind == "message_delta":
        state.completion_tokens = _int(_obj(event.get("usage")).get("output_tokens"))
    elif kind == "error":
        state.stream_error = _message(event.get("error") or "stream error")


def _error_body(text: str) -> str:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip().splitlines()[0][:120] if text.strip() else ""
    if isinstance(error, dict):
        return str(error.get("message", ""))[:120]
    return str(error)[:120] if error else ""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 section 10.2.3): delta-seconds
    or an HTTP-date, clamped to ``[0, MAX_RETRY_AFTER_S]``; None when absent or unreadable.

    ``now`` is wall time (``time.time()``): an HTTP-date is a wall-clock instant.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)  # a run of digits too long for a float is inf: clamped
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT by definition
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def _read_bounded(response: httpx.Response) -> bytes:
    """At most MAX_ERROR_BODY_BYTES of the body; the rest is never read (the stream closes)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY_BYTES:
            break
    return bytes(body[:MAX_ERROR_BODY_BYTES])


async def probe(client: httpx.AsyncClient, target: ProbeTarget) -> ProbeResult:
    """Send one streaming request and measure it. Never raises for endpoint failures."""
    api_key = os.environ.get(target.api_key_env) if target.api_key_env else None
    started_at = time.time()
    # perf_counter is monotonic (a clock step never bends a latency) and finer than
    # time.monotonic on Windows before Python 3.13.
    start = time.perf_counter()
    status: int | None = None

    def failed(error: str, retry_after_s: float | None = None) -> ProbeResult:
        return ProbeResult(
            endpoint=target.endpoint,
            started_at=started_at,
            ok=False,
            status=status,
            ttft_s=None,
            latency_s=time.perf_counter() - start if status is not None else None,
            error=redact(error, known=[api_key]),
            retry_after_s=retry_after_s,
        )

    if target.api_key_env and not api_key:
        return failed(f"environment variable {target.api_key_env} is not set")
    url, headers, body = _request(target, api_key)
    on_event = _on_anthropic_event if target.kind == "anthropic" else _on_openai_event
    state = _StreamState()
    try:
        # httpx's timeout is per read: a trickling stream needs a deadline for the whole probe.
        async with (
            asyncio.timeout(target.timeout_s),
            client.stream(
                "POST", url, json=body, headers=headers, timeout=target.timeout_s
            ) as response,
        ):
            status = response.status_code
            if status != 200:
                detail = _error_body((await _read_bounded(response)).decode(errors="replace"))
                return failed(
                    f"HTTP {status}" + (f": {detail}" if detail else ""),
                    parse_retry_after(response.headers.get("retry-after"), time.time()),
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    state.stream_error = f"malformed stream chunk: {data[:60]!r}"
                    break
                on_event(event, state, time.perf_counter())
    except httpx.HTTPError as exc:
        return failed(describe_http_error(exc))
    except httpx.InvalidURL as exc:  # not an HTTPError: raised before any connection
        return failed(f"invalid URL {url}: {exc}")
    except TimeoutError:
        return failed(f"timed out after {target.timeout_s:g}s")
    latency = time.perf_counter() - start
    error = redact(state.stream_error, known=[api_key]) if state.stream_error else None
    if error is None and state.first_token_at is None:
        error = "stream ended without a content token"
    return ProbeResult(
        endpoint=target.endpoint,
        started_at=started_at,
        ok=error is None,
        status=status,
        ttft_s=state.first_token_at - start if state.first_token_at is not None else None,
        latency_s=latency,
        prompt_tokens=state.prompt_tokens,
        completion_tokens=state.completion_tokens,
        model=state.model,
        error=error,
    )
