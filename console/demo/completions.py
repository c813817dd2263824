"""OpenAI chat-completions wire format, shared by the simulated vLLM nodes and backup provider.

Parses a request body, makes up a reply (deterministic text, so screenshots are stable), and
paces it token by token with delays the caller supplies. It must not decide latency or check
auth: the node and provider modules do.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from console.demo.http_server import HttpResponse

_REPLY_TEXT = (
    "Sure. Here is a short answer: the service looks healthy, latency is within its usual "
    "range, and nothing in the recent logs suggests a problem. If that changes, check the "
    "queue depth first, then the KV-cache usage, then what was deployed last."
)
_WORDS = _REPLY_TEXT.split(" ")
BLOWUP_FACTOR = 8  # token-blowup without max_tokens: replies this many times longer


class BadRequest(ValueError):
    """The body is not a valid chat-completions request; the message says why."""


@dataclass(frozen=True)
class ChatRequest:
    model: str
    prompt_tokens: int
    prompt_key: str  # stable digest of the messages, picks the reply
    max_tokens: int | None
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Reply:
    id: str
    model: str
    created: int
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    system_fingerprint: str | None = None


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    model = data.get("model")
    messages = data.get("messages")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer")
    options = data.get("stream_options") or {}
    text = json.dumps(messages, sort_keys=True)
    return ChatRequest(
        model=model,
        prompt_tokens=_count_prompt_tokens(messages),
        prompt_key=hashlib.sha256(text.encode()).hexdigest(),
        max_tokens=max_tokens,
        stream=bool(data.get("stream")),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


def make_reply(
    request: ChatRequest, model: str, reply_id: str, created: int, *, blowup: bool
) -> Reply:
    """A reply of 6-25 tokens picked by the prompt; run to ``max_tokens`` under token-blowup."""
    natural = 6 + int(request.prompt_key[:4], 16) % 20
    if blowup:
        natural = request.max_tokens or natural * BLOWUP_FACTOR
    count = min(natural, request.max_tokens or natural)
    start = int(request.prompt_key[4:8], 16) % len(_WORDS)
    words = [_WORDS[(start + i) % len(_WORDS)] for i in range(count)]
    tokens = (words[0], *(" " + w for w in words[1:]))
    finish = (
        "length" if request.max_tokens is not None and natural >= request.max_tokens else "stop"
    )
    return Reply(reply_id, model, created, tokens, finish, request.prompt_tokens)


def usage(reply: Reply) -> dict[str, int]:
    completion = len(reply.tokens)
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return HttpResponse.json(status, body, headers)


async def paced(
    reply: Reply, ttft_s: float, next_delay_s: Callable[[], float]
) -> AsyncGenerator[str, None]:
    """Yield the reply's tokens: the first after ``ttft_s``, each next after ``next_delay_s()``."""
    await asyncio.sleep(ttft_s)
    for i, token in enumerate(reply.tokens):
        if i:
            await asyncio.sleep(next_delay_s())
        yield token


async def complete(reply: Reply, tokens: AsyncIterator[str]) -> HttpResponse:
    """Wait for every token, then answer with one ``chat.completion`` object."""
    text = "".join([token async for token in tokens])
    message = {"role": "assistant", "content": text}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": reply.finish_reason,
    }
    body = {
        **_envelope(reply, "chat.completion"),
        "choices": [choice],
        "usage": usage(reply),
    }
    return HttpResponse.json(200, body)


@dataclass(frozen=True)
class StreamStyle:
    """Where a server puts the stream's finish reason and usage: vLLM and OpenAI differ."""

    finish_on_last_token: bool  # vLLM: on the last token's chunk; OpenAI: an empty chunk after
    null_usage: bool  # OpenAI: every chunk carries ``"usage": null`` when usage was asked for
    stop_reason: bool  # vLLM: the finishing chunk says ``"stop_reason"`` (null: EOS or length)


# vllm/entrypoints/openai/serving_chat.py (chat_completion_stream_generator): the output that
# carries finish_reason also carries the last delta text, and chunks are dumped with
# exclude_unset, so no usage key appears before the usage chunk.
VLLM_STREAM = StreamStyle(finish_on_last_token=True, null_usage=False, stop_reason=True)
# OpenAI's API reference (stream_options.include_usage): "all other chunks will also include a
# usage field, but with a null value"; the finish reason comes on a chunk with an empty delta.
OPENAI_STREAM = StreamStyle(finish_on_last_token=False, null_usage=True, stop_reason=False)


async def sse_events(
    reply: Reply, tokens: AsyncIterator[str], include_usage: bool, style: StreamStyle
) -> AsyncGenerator[bytes, None]:
    """``chat.completion.chunk`` events: role, one per token, finish, usage (if asked), DONE."""
    envelope = _envelope(reply, "chat.completion.chunk")
    extra = {"usage": None} if include_usage and style.null_usage else {}
    last = len(reply.tokens) - 1

    def event(delta: dict, finish_reason: str | None = None) -> bytes:
        choice: dict[str, object] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None and style.stop_reason:
            choice["stop_reason"] = None
        return _sse({**envelope, "choices": [choice], **extra})

    index = 0
    async for token in tokens:
        if index == 0:
            yield event({"role": "assistant", "content": ""})
        if index == last and style.finish_on_last_token:
            yield event({"content": token}, reply.finish_reason)
        else:
            yield event({"content": token})
        index += 1
    if not style.finish_on_last_token:
        yield event({}, reply.finish_reason)
    if include_usage:
        yield _sse({**envelope, "choices": [], "usage": usage(reply)})
    yield b"data: [DONE]\n\n"


def stream_response(events: AsyncGenerator[bytes, None], headers: dict[str, str]) -> HttpResponse:
    return HttpResponse(
        200,
        headers={"content-type": "text/event-stream; charset=utf-8", **headers},
        stream=events,
    )


def _envelope(reply: Reply, kind: str) -> dict[str, object]:
    envelope: dict[str, object] = {
        "id": reply.id,
        "object": kind,
        "created": reply.created,
        "model": reply.model,
    }
    if reply.system_fingerprint is not None:
        envelope["system_fingerprint"] = reply.system_fingerprint
    return envelope


def _sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _count_prompt_tokens(messages: list) -> int:
    """About four characters a token, plus the chat template's few tokens per message."""
    total = 3
    for message in messages:
        content = message.get("content", "") if isinstance(message, dict) else ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += 4 + (len(str(content)) + 3) // 4
    return total


def id_sequence(namespace: str) -> Callable[[], str]:
    """``chatcmpl-<32 hex>`` ids, the same sequence every run (stable screenshots)."""
    counter = itertools.count(1)
    return lambda: (
        "chatcmpl-" + hashlib.sha256(f"{namespace}:{next(counter)}".encode()).hexdigest()[:32]
    )
