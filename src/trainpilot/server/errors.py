"""Every error answers as JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}``."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from trainpilot.exceptions import Conflict, InvalidInput, NotFound, StoreUnavailable


class JSON(Response):
    """orjson-encoded JSON: several times faster than the default encoder for large histories."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HTTPError(Exception):
    """An error with its HTTP status, raised inside handlers."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSON:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSON({"error": body}, status_code=status)


CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    503: "unavailable",
}


def classify(exc: Exception) -> tuple[int, str, str, str | None] | None:
    """(status, code, message, field) of one of our own exceptions; None for anything else (a bug)."""
    if isinstance(exc, HTTPError):
        return exc.status, exc.code, exc.message, exc.field
    if isinstance(exc, InvalidInput):
        return 422, "invalid_input", str(exc), exc.field
    if isinstance(exc, NotFound):
        return 404, "not_found", str(exc), None
    if isinstance(exc, Conflict):
        return 409, "conflict", str(exc), None
    if isinstance(exc, StoreUnavailable):
        return 503, "store_unavailable", str(exc), None
    return None


def known_error(exc: Exception) -> JSON | None:
    """The HTTP answer to one of our own exceptions; None for anything else (a bug: a 500)."""
    found = classify(exc)
    return None if found is None else error_response(*found)


def install(app: FastAPI) -> None:
    async def _known(_: Request, exc: Exception) -> Response:
        answer = known_error(exc)
        assert answer is not None
        return answer

    for kind in (HTTPError, InvalidInput, NotFound, Conflict, StoreUnavailable):
        app.add_exception_handler(kind, _known)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # not a field's fault: the same 400 as ingest answers
            ctx: Any = first.get("ctx") or {}
            reason = ctx.get("error") or first.get("msg")
            return error_response(400, "bad_json", f"body is not valid JSON: {reason}")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or None
        return error_response(422, "invalid_input", f"{field or 'request'}: {first.get('msg')}", field)

    @app.exception_handler(HTTPException)
    async def _starlette(_: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, CODES.get(exc.status_code, "error"), str(exc.detail))
