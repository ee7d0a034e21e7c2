"""``serve()``: the API on uvicorn, loopback unless a token guards it."""

from __future__ import annotations

import ipaddress

import uvicorn

from dendrite.api.app import create_app
from dendrite.learning.jobs import JobScheduler
from dendrite.orchestrator import Orchestrator


class InsecureBindError(ValueError):
    """Serving on an address other machines can reach, with nothing to keep them out."""


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

    Refuses (:class:`InsecureBindError`, before binding anything) to listen on
    a non-loopback ``host`` without a ``token``. With ``jobs`` (and a store) the
    learning jobs run on their schedule while it serves.
    """
    check_bind(host, token)
    scheduler = JobScheduler(orchestrator) if jobs and orchestrator.store is not None else None
    app = create_app(orchestrator, token=token, max_body_bytes=max_body_bytes, jobs=scheduler)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False)
