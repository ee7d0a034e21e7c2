"""Server-Sent Events: the wire format, and a response that stops when the client leaves."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from dendrite.store.serialize import dumps


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    """One event; ``data`` as one line of JSON (JSON text never holds a raw newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {dumps(data)}\n\n"


KEEPALIVE = ": keep-alive\n\n"


class EventStreamResponse(StreamingResponse):
    """Streams its body until the body ends or the client disconnects, whichever is first.

    Starlette stops watching for the disconnect on servers that speak ASGI
    2.4 and relies on the next write failing instead; a run that emits
    nothing for a minute would then go on for a minute after its client left.
    This one always watches, and cancels the body's iterator (which cancels
    the run) as soon as the client is gone.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await self.stream_response(send)
            except OSError:  # the client went away mid-write
                pass
            finally:
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()
            group.cancel_scope.cancel()
