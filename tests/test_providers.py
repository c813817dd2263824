"""Streaming probes against loopback servers speaking the OpenAI and Anthropic dialects."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from backends.providers import (
    MAX_RETRY_AFTER_S,
    ProbeTarget,
    parse_retry_after,
    probe,
)
from tests.loopback_http import LoopbackServer
from tests.sshd import free_port


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.close()


def target(url: str, kind: str = "openai", key_env: str | None = None) -> ProbeTarget:
    return ProbeTarget("chat", kind, f"{url}/v1", "m-1", "Reply ok", 8, 5.0, key_env)


async def test_openai_stream_ttft_at_first_content_token(server, monkeypatch) -> None:
    monkeypatch.setenv("TEST_PROBE_KEY", "k-123")
    server.chunks = ["o", "k"]
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url, key_env="TEST_PROBE_KEY"))
    assert result.ok, result.error
    assert 0 < result.ttft_s <= result.latency_s
    assert (result.prompt_tokens, result.completion_tokens, result.model) == (12, 2, "m-1")
    assert server.received_headers[0]["authorization"] == "Bearer k-123"
    assert "k-123" not in repr(result)


async def test_anthropic_stream(server, monkeypatch) -> None:
    monkeypatch.setenv("TEST_PROBE_KEY", "k-456")
    server.chunks = ["o", "k", "!"]
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url, "anthropic", "TEST_PROBE_KEY"))
    assert result.ok, result.error
    assert (result.prompt_tokens, result.completion_tokens) == (9, 3)
    headers = server.received_headers[0]
    assert headers["x-api-key"] == "k-456"
    assert headers["anthropic-version"] == "2023-06-01"


async def test_missing_key_variable_sends_nothing(server, monkeypatch) -> None:
    monkeypatch.delenv("TEST_PROBE_KEY", raising=False)
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url, key_env="TEST_PROBE_KEY"))
    assert not result.ok
    assert result.error == "environment variable TEST_PROBE_KEY is not set"
    assert server.requests == []


async def test_stream_without_content_is_a_failed_probe(server) -> None:
    server.chunks = []
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url))
    assert not result.ok
    assert result.error == "stream ended without a content token"
    assert result.ttft_s is None


async def test_server_error_keeps_status_and_message(server) -> None:
    server.status = 503
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url))
    assert (result.ok, result.status, result.error) == (False, 503, "HTTP 503: overloaded")


async def test_nothing_listening() -> None:
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(f"http://127.0.0.1:{free_port()}"))
    assert (result.ok, result.status) == (False, None)
    assert result.error == "connection refused or host unreachable"


async def test_malformed_url_is_a_failed_probe_not_an_exception() -> None:
    async with httpx.AsyncClient() as client:
        result = await probe(client, target("http://[::1"))
    assert (result.ok, result.status) == (False, None)
    assert result.error.startswith("invalid URL http://[::1/v1/chat/completions: ")


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b'data: {"error": "boom"}\n\n', "boom"),
        (b'data: {"error": {"message": "model overloaded"}}\n\n', "model overloaded"),
        (b'data: ["not", "an", "object"]\n\n', "malformed stream chunk"),
        (b'data: {"choices": ["x", {"delta": "y"}], "usage": "n/a"}\n\n', "without a content"),
        (b"data: {not json\n\n", "malformed stream chunk"),
    ],
)
async def test_odd_stream_shapes_fail_the_probe_not_the_hub(server, stream, error) -> None:
    server.raw_stream = stream
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url))
    assert not result.ok
    assert error in result.error


async def test_timeout_covers_a_trickling_stream(server) -> None:
    server.chunks = ["a"] * 20
    server.trickle_s = 0.1  # every read is quick, the whole answer takes ~2 s
    slow = ProbeTarget("chat", "openai", f"{server.url}/v1", "m-1", "Reply ok", 8, 0.5)
    async with httpx.AsyncClient() as client:
        result = await probe(client, slow)
    assert not result.ok
    assert result.error == "timed out after 0.5s"
    assert result.latency_s < 1.5


async def test_a_key_echoed_by_the_server_is_redacted(server, monkeypatch) -> None:
    monkeypatch.setenv("TEST_PROBE_KEY", "k-secret-value-42")
    server.status = 401
    server.error_message = "Incorrect API key provided: k-secret-value-42 (Bearer k-secret)"
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url, key_env="TEST_PROBE_KEY"))
    assert result.status == 401
    assert "k-secret" not in result.error
    assert "[redacted]" in result.error


# --- Rate limits: Retry-After as delta-seconds or an HTTP-date (RFC 9110 10.2.3) ------------


async def test_a_rate_limited_probe_carries_retry_after_seconds(server) -> None:
    server.status = 429
    server.headers = {"retry-after": "7"}
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url))
    assert (result.ok, result.status, result.retry_after_s) == (False, 429, 7.0)


async def test_a_rate_limited_probe_carries_retry_after_as_an_http_date(server) -> None:
    server.status = 503
    server.headers = {"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)}
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(server.url))
    assert result.status == 503
    assert 27 <= result.retry_after_s <= 30


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # RFC 9110's example date: long past
        ("Wed, 21 Oct 2015 06:33:00 GMT", 300.0),  # five minutes after "now" below
        ("Wed, 21 Oct 2015 07:28:00 GMT", MAX_RETRY_AFTER_S),  # an hour: clamped
        ("86400", MAX_RETRY_AFTER_S),  # a day: clamped
        ("1" + "0" * 400, MAX_RETRY_AFTER_S),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 06:28:00 GMT").timestamp()
    assert parse_retry_after(value, now) == seconds


# --- Error bodies are read only up to a bound ------------------------------------------------


class EndlessErrorPage:
    """An HTTP server on 127.0.0.1 whose 502 page never ends (a proxy gone wrong)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"<html><body><h1>502 Bad Gateway</h1>\n" + b"x" * 8000 + b"\n"
        try:
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def endless() -> AsyncIterator[EndlessErrorPage]:
    page = EndlessErrorPage()
    page.server = await asyncio.start_server(page.handle, "127.0.0.1", 0)
    yield page
    page.server.close()


async def test_an_endless_error_page_is_read_only_up_to_the_bound(endless) -> None:
    async with httpx.AsyncClient() as client:
        result = await probe(client, target(endless.url))  # a 5 s probe deadline
    assert (result.ok, result.status) == (False, 502)
    assert result.error == "HTTP 502: <html><body><h1>502 Bad Gateway</h1>"
    assert result.latency_s < 2  # answered from the first 64 KiB, not at the deadline
