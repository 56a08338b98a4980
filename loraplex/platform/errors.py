"""Errors in OpenAI's shape, and the handlers that map every failure to one.

Every error response is `{"error": {"message", "type", "param", "code"}}`. Registry exceptions
map by family (errors.py of the registry): not found -> 404 (never 403, which would reveal that
another tenant's adapter exists), conflict -> 409, quota -> 413, other ValueError -> 400. A dead
engine or an adapter whose bytes cannot be fetched is a 503.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplex.adapters.errors import (
    AdapterFetchError,
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    TenantDisabledError,
)
from loraplex.engine.async_engine import EngineDeadError

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered with `status` in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    error_type = _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def model_not_found(model: str) -> APIError:
    return APIError(
        404, f"The model {model!r} does not exist", code="model_not_found", param="model"
    )


def as_api_error(exc: BaseException) -> APIError | None:
    """The API error for a known exception; None for a bug (answered as a 500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NotFoundError):
        return APIError(404, str(exc), code="not_found")
    if isinstance(exc, TenantDisabledError):
        return APIError(403, str(exc), code="tenant_disabled")
    if isinstance(exc, ConflictError):
        return APIError(409, str(exc), code="conflict")
    if isinstance(exc, QuotaExceededError):
        return APIError(413, str(exc), code="quota_exceeded")
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_dead")
    if isinstance(exc, AdapterFetchError):
        return APIError(503, str(exc), code="adapter_unavailable")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc), code="invalid_value")
    return None


def _response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}", None
    # The location starts with "body", "query" or "path"; the rest names the parameter. Parts
    # with a "-" or "[" are pydantic's names for the branches of a union, not fields.
    location = [
        str(part)
        for part in first.get("loc", ())[1:]
        if not (isinstance(part, str) and ("-" in part or "[" in part))
    ]
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    same_field = [e for e in errors if e.get("loc", ())[:2] == first.get("loc", ())[:2]]
    if len(same_field) > 1:
        message = f"matches none of its accepted forms (for one: {message})"
    if param is None and first.get("type") == "missing":
        message = "a request body is required"
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return _response(APIError(400, message, code="invalid_request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _response(APIError(exc.status_code, str(exc.detail), headers=exc.headers))

    async def _known(_request: Request, exc: Exception) -> JSONResponse:
        error = as_api_error(exc)
        assert error is not None  # registered only for the classes as_api_error knows
        return _response(error)

    for known in (APIError, NotFoundError, ValueError, EngineDeadError, AdapterFetchError):
        app.add_exception_handler(known, _known)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _response(APIError(500, "internal server error", code="internal_error"))
