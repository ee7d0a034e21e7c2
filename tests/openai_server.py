"""A local HTTP server that speaks the OpenAI chat-completions protocol, for our side of it.

No model can run here, so tests script the assistant's answers; what is
tested is real: the ``openai`` SDK's requests over a socket, our prompts,
response formats, parsing and repair loop. Each request is kept for the test
to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = str | bytes | Callable[[dict[str, Any]], str | int | bytes]
"""The assistant's text, or a function of the request giving it or an HTTP error status;
bytes are sent as the whole response body, as they are (servers send odd ones)."""


@dataclass
class ChatServer:
    url: str
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    """The bearer token of each request, in order."""
    reject_json_schema: bool | frozenset[str] = False
    """Refuse ``json_schema`` response formats: always, or for the models named."""
    reject_status: int = 400
    """The status of that refusal."""
    error_headers: dict[str, str] = field(default_factory=dict)
    """Headers sent with every error status (``Retry-After``)."""
    trickle: float = 0.0
    """Seconds between the bytes of a reply's body: a server that answers, but so slowly
    that no read ever times out."""
    report_usage: bool = True
    """Report token usage: the words of the request's messages, and of the answer."""
    usage: dict[str, Any] | None = None
    """Report this ``usage`` object instead, as it is (servers send odd ones)."""

    def say(self, *replies: Reply) -> None:
        self.replies.extend(replies)


def _handler(server: ChatServer, keep_alive: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps connections open between requests, as real servers do.
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in server.error_headers.items() if status >= 400 else ():
                self.send_header(name, value)
            self.end_headers()
            if not server.trickle:
                self.wfile.write(data)
                return
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(server.trickle)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            server.requests.append(request)
            server.keys.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
            response_format = request.get("response_format", {})
            refused = server.reject_json_schema
            if isinstance(refused, frozenset):
                refused = request.get("model") in refused
            if refused and response_format.get("type") == "json_schema":
                self._send(
                    server.reject_status,
                    {
                        "error": {
                            "message": "response_format json_schema unsupported",
                            "type": "invalid_request_error",
                        }
                    },
                )
                return
            if not server.replies:
                self._send(500, {"error": {"message": "the test scripted no more replies"}})
                return
            reply = server.replies.popleft()
            content = reply(request) if callable(reply) else reply
            if isinstance(content, int):
                self._send(content, {"error": {"message": f"the test answered {content}"}})
                return
            if isinstance(content, bytes):
                self._send(200, content)
                return
            body: dict[str, Any] = {
                "id": f"chatcmpl-{len(server.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "stub"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
            if server.usage is not None:
                body["usage"] = server.usage
            elif server.report_usage:
                prompt, completion = usage_of(request, content)
                body["usage"] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
            self._send(200, body)

    return Handler


def usage_of(request: dict[str, Any], answer: str) -> tuple[int, int]:
    """The tokens this server reports for a request and its answer: their words, counted."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    return prompt, len(answer.split())


@contextmanager
def chat_server(*, keep_alive: bool = False) -> Iterator[ChatServer]:
    """A scripted chat server on a free port of 127.0.0.1, stopped on exit."""
    state = ChatServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, keep_alive))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
