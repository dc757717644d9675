"""The one error shape of the API: `{"error": code, "message": text, "details": {"path": ...}}`.

Every non-2xx response goes through here: errors the service raises (`ApiError`), FastAPI's
request validation (422), Starlette's routing errors (404 unknown route, 405) and anything
unexpected (500, logged with its traceback, never leaked).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_core.voices import VoiceExistsError, VoiceNotFoundError

logger = logging.getLogger("ray.serve")

#: The code used for routing errors Starlette raises itself.
STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
                413: "invalid_request", 415: "unsupported_format", 422: "validation_error",
                500: "internal_server_error", 503: "model_not_ready"}


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


def error_response(request: Request, status_code: int, code: str, message: str,
                   headers: dict[str, str] | None = None, **details: Any) -> JSONResponse:
    body = {"error": code, "message": message, "details": {"path": request.url.path, **details}}
    return JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
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

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal_server_error", "Internal server error")
