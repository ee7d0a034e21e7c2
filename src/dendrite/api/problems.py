"""Errors as ``application/problem+json`` (RFC 9457).

Every error the API answers, whether raised by a route, by request
validation, by the auth and body-size guard or by a bug, has the same shape:
``type`` (a URN naming the kind of problem), ``title`` (short, the same for
every problem of that type), ``status``, ``detail`` (what went wrong with this
request, and what to do about it) and ``instance`` (the request's path), plus
extension members where they help: ``errors`` for invalid fields, ``problems``
and the recorded attempt's ``execution_id`` for a plan that cannot run.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dendrite.store.serialize import dumps

log = logging.getLogger("dendrite.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_type(slug: str) -> str:
    return f"urn:dendrite:problem:{slug}"


class Problem(BaseModel):
    """An RFC 9457 problem detail; extension members may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URN naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str | None = None


class ProblemError(Exception):
    """Raised by a route to answer with a problem."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return problem_body(
            self.status, self.slug, self.title, self.detail, instance, **self.extensions
        )


def problem_body(
    status: int, slug: str, title: str, detail: str, instance: str | None = None, **ext: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(ext)
    return body


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **ext: Any,
) -> Response:
    return Response(
        dumps(problem_body(status, slug, title, detail, instance, **ext)),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


# What each status means when a route or Starlette gives no more specific title.
_GENERIC = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-request", "Invalid request"),
    500: ("internal-error", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


def _generic(status: int) -> tuple[str, str]:
    if status in _GENERIC:
        return _GENERIC[status]
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return phrase.lower().replace(" ", "-"), phrase


def _field_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    found = []
    for item in error.errors():
        loc = [str(part) for part in item.get("loc", ())]
        found.append(
            {
                "location": loc[0] if loc else "request",
                "field": ".".join(loc[1:]) or None,
                "message": str(item.get("msg", "invalid")),
                "type": str(item.get("type", "invalid")),
            }
        )
    return found


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = f"{e['location']} {e['field']}" if e["field"] else e["location"]
        parts.append(f"{where}: {e['message']}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_handlers(app: FastAPI) -> None:
    """Turn every error into a problem response."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, error: ProblemError) -> Response:
        return Response(
            dumps(error.body(request.url.path)),
            status_code=error.status,
            media_type=PROBLEM_MEDIA_TYPE,
            headers=error.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        errors = _field_errors(error)
        media = request.headers.get("content-type", "")
        sent = int(request.headers.get("content-length") or 0) > 0
        if sent and "json" not in media.lower() and any(e["location"] == "body" for e in errors):
            # FastAPI reads a body as JSON only when it says it is: curl -d sends a form.
            return problem_response(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, sent with Content-Type: application/json "
                f"(this request said {media or 'nothing'})",
                request.url.path,
            )
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(
                400,
                "malformed-json",
                "Malformed JSON body",
                "the request body is not valid JSON: "
                + _describe([e for e in errors if e["type"] == "json_invalid"]),
                request.url.path,
            )
        return problem_response(
            422,
            "invalid-request",
            "Invalid request",
            _describe(errors),
            request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        slug, title = _generic(error.status_code)
        detail = error.detail if isinstance(error.detail, str) else title
        if error.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; see /docs"
        elif error.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            error.status_code,
            slug,
            title,
            detail,
            request.url.path,
            headers=dict(error.headers) if error.headers else None,
        )

    @app.exception_handler(Exception)  # what fails outside the routes: the guard, say
    async def _crash(request: Request, error: Exception) -> Response:
        return _crash_response(request.method, request.url.path, error)

    app.add_middleware(_AnswerCrashes)


def _crash_response(method: str, path: str, error: Exception) -> Response:
    log.error("unhandled error on %s %s", method, path, exc_info=error)
    return problem_response(
        500,
        "internal-error",
        "Internal server error",
        f"the server failed while handling this request ({type(error).__name__}); "
        "the server log has the details",
        path,
    )


class _AnswerCrashes:
    """A route's unexpected error answered as a 500 problem, and the connection kept.

    Starlette's handler for ``Exception`` answers too, but then raises the error again
    for the server to log, and uvicorn closes the connection: a client's next request
    on it was reset. Once an answer has begun (a stream) nothing else can be sent, and
    the error goes on as before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            if started:
                raise
            response = _crash_response(scope.get("method", ""), scope.get("path", ""), error)
            await response(scope, receive, send)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems a route may answer."""
    return {
        status: {
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            "description": _generic(status)[1],
        }
        for status in statuses
    }
