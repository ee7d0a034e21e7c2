"""The guard in front of every route: the bearer token, then the body size.

A pure ASGI middleware, so that it covers everything the app serves
(``/openapi.json`` and ``/docs`` included) and sees the body before any route
parses it. The body is read here, up to the limit, and replayed to the app;
after it, ``receive`` is the server's own again, so a streaming route still
hears the client disconnect.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from dendrite.api.problems import problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# An oversized body is read and discarded up to this many times the limit, so that a
# client which sends it all before reading (most do) gets the 413 instead of a reset
# connection. Beyond that, the answer goes out at once and the connection is closed.
_DRAIN_FACTOR = 16


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        open_paths: Collection[str] = ("/healthz",),
    ) -> None:
        self.app = app
        # Compared as digests: constant time, and no length leak either.
        self._token = _digest(token.encode()) if token is not None else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._token is not None and path not in self.open_paths:
            refusal = self._refuse(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                response = problem_response(
                    400,
                    "bad-request",
                    "Bad request",
                    f"Content-Length {declared.decode(errors='replace')!r} is not a byte count",
                    path,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
            if length > limit:
                if length <= limit * _DRAIN_FACTOR:
                    await self._drain(receive, limit * _DRAIN_FACTOR)
                    await self._too_large(scope, receive, send, f"{length} bytes")
                else:
                    await self._too_large(scope, receive, send, f"{length} bytes", close=True)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                if more:
                    size += await self._drain(receive, limit * _DRAIN_FACTOR - size)
                await self._too_large(scope, receive, send, f"at least {size} bytes")
                return
            if chunk:
                chunks.append(chunk)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refuse(self, scope: Scope) -> Any:
        assert self._token is not None
        presented = None
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer" and credentials.strip():
                    presented = credentials.strip()
                break
        path = scope.get("path", "")
        if presented is None:
            return problem_response(
                401,
                "unauthorized",
                "Authentication required",
                "this server needs a bearer token: send 'Authorization: Bearer <token>'",
                path,
                headers={"WWW-Authenticate": 'Bearer realm="dendrite"'},
            )
        if not hmac.compare_digest(_digest(presented), self._token):
            return problem_response(
                401,
                "unauthorized",
                "Authentication required",
                "the bearer token is not the one this server was started with",
                path,
                headers={"WWW-Authenticate": 'Bearer realm="dendrite", error="invalid_token"'},
            )
        return None

    async def _drain(self, receive: Receive, budget: int) -> int:
        """Read and discard the rest of the body, up to ``budget`` bytes; returns how many."""
        read = 0
        while read <= budget:
            message = await receive()
            if message["type"] != "http.request":
                break
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return read

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, size: str, *, close: bool = False
    ) -> None:
        response = problem_response(
            413,
            "body-too-large",
            "Request body too large",
            f"the request body has {size}; this server accepts at most {self.max_body_bytes} bytes",
            scope.get("path", ""),
            headers={"Connection": "close"} if close else None,
        )
        await response(scope, receive, send)
