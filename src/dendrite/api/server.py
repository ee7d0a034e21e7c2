"""``serve()``: the API on uvicorn, loopback unless a token guards it."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket

import uvicorn
from fastapi import FastAPI

from dendrite.api.app import create_app, end_streams
from dendrite.learning.jobs import JobScheduler
from dendrite.orchestrator import Orchestrator

SHUTDOWN_GRACE_SECONDS = 5.0
"""At shutdown, how long requests still open (a long ``POST /v1/goals``) may go on
before they are cancelled, their runs recorded as cancelled."""


class _Server(uvicorn.Server):
    """uvicorn that ends the app's event streams as soon as it starts shutting down.

    uvicorn stops once the open responses end, and an event stream is open for as
    long as its run: Ctrl-C would wait for every streamed run to finish, then
    record it as if nobody had asked to stop.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self.startup_error: OSError | None = None
        """Why binding failed: uvicorn only logs it, then exits the process."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        def keep(record: logging.LogRecord) -> bool:
            if isinstance(record.msg, OSError):  # uvicorn logs the bind's error itself
                self.startup_error = record.msg
            return True

        logger = logging.getLogger("uvicorn.error")
        logger.addFilter(keep)
        try:
            await super().startup(sockets)
        finally:
            logger.removeFilter(keep)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_streams(self._app)
        await super().shutdown(sockets)


class InsecureBindError(ValueError):
    """Serving on an address other machines can reach, with nothing to keep them out."""


class ServerStartError(RuntimeError):
    """The server never started: its address could not be bound (a port in use, a host
    that does not resolve), or the app's startup failed. Raised rather than uvicorn's
    ``sys.exit``, so that a caller (the CLI) reports it in its own words and exit code."""

    def __init__(self, host: str, port: int, reason: OSError | None) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"the server could not start on {address} ({_why(reason)})")


def _why(reason: OSError | None) -> str:
    """The OS's words: asyncio wraps a bind's error in a longer message naming the address."""
    if reason is None:
        return "the log above says why"
    if reason.errno is not None and reason.errno > 0:  # getaddrinfo's are negative
        return os.strerror(reason.errno)
    return reason.strerror or str(reason)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`InsecureBindError` for a reachable address without a token."""
    if token is not None and not token.strip():
        raise ValueError("the API token must not be empty")
    if token is None and not is_loopback(host):
        shown = host or "all interfaces"
        raise InsecureBindError(
            f"refusing to serve on {shown} without a token: anyone who can reach this "
            "address could run goals, read the execution history and disable tools. Set a "
            "token (clients then send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


def serve(
    orchestrator: Orchestrator,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    max_body_bytes: int = 1_000_000,
    log_level: str = "info",
    jobs: bool = True,
) -> None:
    """Serve the API until interrupted (Ctrl-C); the caller closes the orchestrator.

    On Ctrl-C the open event streams end at once, their runs cancelled; other
    requests get :data:`SHUTDOWN_GRACE_SECONDS` to finish, then are cancelled too.
    Either way the runs are recorded as cancelled before this returns.

    Refuses (:class:`InsecureBindError`, before binding anything) to listen on
    a non-loopback ``host`` without a ``token``; raises :class:`ServerStartError` when
    the server never started. With ``jobs`` (and a store) the learning jobs run on
    their schedule while it serves.
    """
    check_bind(host, token)
    scheduler = JobScheduler(orchestrator) if jobs and orchestrator.store is not None else None
    app = create_app(orchestrator, token=token, max_body_bytes=max_body_bytes, jobs=scheduler)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    server = _Server(config, app)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # the Ctrl-C that stopped it, raised again
            server.run()
    except SystemExit:  # uvicorn's way out when it cannot bind, or the app's startup failed
        if server.started:
            raise
    if not server.started:
        raise ServerStartError(host, port, server.startup_error)
