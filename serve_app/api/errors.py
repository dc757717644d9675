"""The one error shape of the API: `{"error": code, "message": text, "details": {"path": ..., "request_id": ...}}`.

Every non-2xx response goes through here: errors the service raises (`ApiError`), FastAPI's
request validation (422), Starlette's routing errors (404 unknown route, 405), a store, task
manager or stage that is gone or restarting (503 with `Retry-After`) and anything unexpected
(500). A message is one sentence for the user; what went wrong inside (the traceback, which
process) goes to the server log under the request id that `details` carries.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.failures import REPLICA_GONE, RETRY_AFTER_S, replica_gone, root_cause
from tts_core.voices import VoiceExistsError, VoiceNotFoundError

logger = logging.getLogger("ray.serve")

#: The code used for routing errors Starlette raises itself.
STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
                413: "payload_too_large", 415: "unsupported_format", 422: "validation_error",
                500: "internal_server_error", 503: "model_not_ready"}
#: Request ids taken from the `X-Request-ID` header (Ray Serve's proxy sets one, keeping a client's
#: own); anything else is replaced, so an id is safe to echo and to grep for.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ApiError(Exception):
    """An error the API answers with, in the contract's shape."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **details: Any):
        super().__init__(message)
        self.status_code, self.code, self.message = status_code, code, message
        self.headers, self.details = headers, details


def voice_not_found(voice_id: str) -> ApiError:
    return ApiError(404, "voice_not_found", VoiceNotFoundError(voice_id).message)


def voice_exists(voice_id: str) -> ApiError:
    return ApiError(409, "voice_already_exists", VoiceExistsError(voice_id).message)


def invalid_request(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def service_unavailable() -> ApiError:
    return ApiError(503, "service_unavailable", "A part of the service is restarting; retry in a few seconds.",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def request_id(scope: dict[str, Any]) -> str:
    """The request's id (Serve's, which its replicas' logs carry), or a new one; kept in the scope."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        header = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        state["request_id"] = header if _REQUEST_ID.fullmatch(header) else uuid.uuid4().hex
    return state["request_id"]


def error_body(scope: dict[str, Any], code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": code, "message": message,
            "details": {"path": scope.get("path", ""), "request_id": request_id(scope), **details}}


def error_response(request: Request, status_code: int, code: str, message: str,
                   headers: dict[str, str] | None = None, **details: Any) -> JSONResponse:
    body = error_body(request.scope, code, message, **details)
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)


def log_failure(request: Request, status_code: int, exc: BaseException) -> None:
    """What went wrong, in the server log under the request's id: the traceback for a 5xx, one
    line for a 4xx."""
    where = f"request {request_id(request.scope)}: {request.method} {request.url.path} -> {status_code}"
    if status_code >= 500:
        logger.error("%s", where, exc_info=exc)
    else:
        logger.info("%s: %r", where, root_cause(exc))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.__cause__ is not None:
            log_failure(request, exc.status_code, exc.__cause__)
        return error_response(request, exc.status_code, exc.code, exc.message, exc.headers, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
                  for error in exc.errors()]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
        return error_response(request, 422, "validation_error", f"Request validation failed: {summary}",
                              errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "http_error")
        message = {404: f"Route {request.url.path} not found",
                   405: f"Method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                          str(exc.detail))
        return error_response(request, exc.status_code, code, message, dict(exc.headers or {}) or None)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log_failure(request, 503, exc)
        error = service_unavailable()
        return error_response(request, error.status_code, error.code, error.message, error.headers)

    for error_class in REPLICA_GONE:
        app.add_exception_handler(error_class, unavailable)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        if replica_gone(exc):  # wrapped by Ray in a way the handlers above do not match
            return await unavailable(request, exc)
        log_failure(request, 500, exc)
        return error_response(request, 500, "internal_server_error",
                              "Internal server error; the server log has the details under this request's id.")
