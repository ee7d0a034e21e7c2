"""The HTTP API (FastAPI): ``create_app(orchestrator)`` and ``serve(orchestrator)``.

See ``docs/api.md`` for the routes.
"""

from dendrite.api.app import create_app, end_streams
from dendrite.api.server import InsecureBindError, ServerStartError, is_loopback, serve

__all__ = [
    "InsecureBindError",
    "ServerStartError",
    "create_app",
    "end_streams",
    "is_loopback",
    "serve",
]
