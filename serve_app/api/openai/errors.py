"""OpenAI's error shape for the `/v1` routes: `{"error": {"message", "type", "param", "code"}}`, with
OpenAI's status codes (400 for any invalid request, 404 for an unknown model, 401 for a key).

The service's own errors (`ApiError`, raised by the shared synthesis logic) keep their status and
code; FastAPI's validation errors become 400s naming the field at fault, as OpenAI answers them.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.errors import ApiError
from serve_app.api.openai.protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger("ray.serve")

#: Pydantic's error types -> OpenAI's error codes.
VALIDATION_CODES = {"missing": "missing_required_parameter", "string_too_long": "string_above_max_length"}


class OpenAIError(Exception):
    """An error the `/v1` routes answer with, in OpenAI's shape."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.message, self.param, self.code, self.headers = status_code, message, param, code, headers


def openai_error_response(status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                          headers: dict[str, str] | None = None) -> JSONResponse:
    error_type = "invalid_request_error" if status_code < 500 else "server_error"
    body = ErrorResponse(error=ErrorDetail(message=message, type=error_type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """The first problem, named the way OpenAI names it: `Invalid 'speed': ...`."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    kind = error.get("type", "")
    if kind == "json_invalid" or param is None:
        message = "We could not parse the JSON body of your request: it must be a JSON object of the request's fields."
        return openai_error_response(400, message)
    if kind == "missing":
        return openai_error_response(400, f"Missing required parameter: '{param}'.", param=param,
                                     code=VALIDATION_CODES[kind])
    return openai_error_response(400, f"Invalid '{param}': {error.get('msg', 'invalid value')}.", param=param,
                                 code=VALIDATION_CODES.get(kind, "invalid_value"))


def install_openai_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return openai_error_response(exc.status_code, exc.message, param=exc.param, code=exc.code,
                                     headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return openai_error_response(exc.status_code, exc.message, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"Invalid URL ({request.method} {request.url.path})",
                   405: f"Method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                          str(exc.detail))
        return openai_error_response(exc.status_code, message, headers=dict(exc.headers or {}) or None)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return openai_error_response(500, "The server had an error while processing your request.")
