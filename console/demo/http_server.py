"""A minimal HTTP/1.1 server on asyncio streams, for the demo's vLLM and provider endpoints.

Why asyncio streams and not ``http.server``: the whole fleet runs on one event loop in one
thread, streamed responses sleep between tokens without holding a thread each, and a node
going down must drop its open keep-alive connections at once, which needs every connection
and handler task in hand. Supports keep-alive, ``Content-Length`` request bodies, and
``Transfer-Encoding: chunked`` responses for streams. It must not know any route: handlers do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

_MAX_BODY_BYTES = 1 << 20
HOST = "127.0.0.1"


class StreamAborted(Exception):
    """Raised inside a response stream to drop the connection mid-response (engine died)."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]  # every value of a repeated key, as parse_qs gives them
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncGenerator[bytes, None] | None = None  # when set: sent chunked, body unused

    @classmethod
    def json(cls, status: int, data: object, headers: dict[str, str] | None = None) -> HttpResponse:
        body = json.dumps(data).encode()
        return cls(status, body, {"content-type": "application/json", **(headers or {})})


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """Serves one handler on 127.0.0.1; can stop (dropping connections) and start again."""

    def __init__(self, handler: Handler, server_header: str) -> None:
        self._handler = handler
        self._server_header = server_header
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one); returns the port."""
        self._server = await asyncio.start_server(self._serve, HOST, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop every open connection, as a dead host would."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()  # the port is free again when this returns

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, StreamAborted):
            pass  # the client left, sent an over-long line, or the engine died under it
        except asyncio.CancelledError:
            pass  # stop() cancelled us; ending quietly keeps asyncio's stream callback from logging
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should close."""
        request_line = await reader.readline()
        if not request_line:
            return False
        try:
            method, target, version = request_line.decode("latin-1").split()
        except ValueError:
            await self._send(writer, HttpResponse(400, b"bad request line\n"), keep_alive=False)
            return False
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit() or "chunked" in headers.get("transfer-encoding", ""):
            await self._send(writer, HttpResponse(411, b"Content-Length required\n"), False)
            return False
        if int(length) > _MAX_BODY_BYTES:
            await self._send(writer, HttpResponse(413, b"body too large\n"), keep_alive=False)
            return False
        body = await reader.readexactly(int(length))
        url = urlsplit(target)
        request = HttpRequest(method, url.path, parse_qs(url.query), headers, body)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        try:
            response = await self._handler(request)
        except StreamAborted:
            raise
        except Exception as exc:  # a handler bug must cost one request, not the server
            response = HttpResponse.json(500, {"error": {"message": repr(exc)}})
        await self._send(writer, response, keep_alive)
        return keep_alive

    async def _send(
        self, writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool
    ) -> None:
        head = {
            "date": formatdate(usegmt=True),
            "server": self._server_header,
            **response.headers,
            "connection": "keep-alive" if keep_alive else "close",
        }
        if response.stream is None:
            head["content-length"] = str(len(response.body))
        else:
            head["transfer-encoding"] = "chunked"
        reason = HTTPStatus(response.status).phrase
        lines = [f"HTTP/1.1 {response.status} {reason}", *(f"{k}: {v}" for k, v in head.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if response.stream is None:
            writer.write(response.body)
            await writer.drain()
            return
        try:
            async for piece in response.stream:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
        finally:
            await response.stream.aclose()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
