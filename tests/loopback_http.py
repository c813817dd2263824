"""A small, scriptable HTTP server on 127.0.0.1 for hub and probe tests.

It serves ``/metrics`` with whatever text the test sets, and an OpenAI-style streaming
``/v1/chat/completions``; it can be told to fail, to stall, or to answer with a given status,
and it counts requests and the most it ever had in flight at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self) -> None:
        self.metrics_text = ""
        self.status = 200
        self.chat_status: int | None = None  # overrides status for POST (chat) only
        self.error_message = "overloaded"
        self.raw_stream: bytes | None = None  # sent instead of the generated chat stream
        self.trickle_s = 0.0  # pause between lines of a response
        self.delay_s = 0.0
        self.headers: dict[str, str] = {}
        self.chunks = ["ok"]
        self.received_headers: list[dict[str, str]] = []
        self.requests: list[tuple[float, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                """Quiet: tests read the request list instead."""

            def _enter(self) -> None:
                with server._lock:
                    server.requests.append((time.monotonic(), self.path))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay_s)

            def _leave(self) -> None:
                with server._lock:
                    server.in_flight -= 1

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not server.trickle_s:
                    self.wfile.write(body)
                    return
                for line in body.splitlines(keepends=True):  # a slow stream, line by line
                    self.wfile.write(line)
                    self.wfile.flush()
                    time.sleep(server.trickle_s)

            def do_GET(self) -> None:
                self._enter()
                try:
                    self._send(server.status, server.metrics_text.encode(), "text/plain")
                finally:
                    self._leave()

            def do_POST(self) -> None:
                self._enter()
                try:
                    server.received_headers.append(dict(self.headers))
                    length = int(self.headers.get("content-length", 0))
                    request = json.loads(self.rfile.read(length) or b"{}")
                    status = server.chat_status or server.status
                    if status != 200:
                        error = {"error": {"message": server.error_message, "type": "x"}}
                        self._send(status, json.dumps(error).encode(), "application/json")
                        return
                    if self.path.endswith("/messages"):
                        body = _anthropic_stream(request.get("model"), server.chunks)
                        self._send(200, body, "text/event-stream")
                        return
                    events = [
                        {
                            "model": request.get("model"),
                            "choices": [{"delta": {"role": "assistant"}}],
                        }
                    ]
                    events += [
                        {"model": request.get("model"), "choices": [{"delta": {"content": c}}]}
                        for c in server.chunks
                    ]
                    events.append(
                        {
                            "model": request.get("model"),
                            "choices": [],
                            "usage": {"prompt_tokens": 12, "completion_tokens": len(server.chunks)},
                        }
                    )
                    body = server.raw_stream or b"".join(
                        f"data: {json.dumps(e)}\n\n".encode() for e in events
                    )
                    self._send(200, body + b"data: [DONE]\n\n", "text/event-stream")
                finally:
                    self._leave()

        return Handler


def _anthropic_stream(model: str | None, chunks: list[str]) -> bytes:
    """Anthropic Messages streaming, in the event shapes its API reference documents."""
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"model": model, "usage": {"input_tokens": 9, "output_tokens": 1}},
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": c},
                },
            )
            for c in chunks
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": len(chunks)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )
