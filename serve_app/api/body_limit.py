"""A bound on request bodies, enforced as they arrive rather than after they were read.

A pure ASGI middleware: a body whose `Content-Length` is over the limit is refused before a
byte of it is read; a chunked body is counted as it is received and refused as soon as it
passes the limit. Either way the answer is 413 in the API's error shape. The connection stays
open: the HTTP server discards the rest of the body unread, and a client that insists on
sending it all before it reads (most do) still gets the 413 rather than a broken connection.

The ingress applies it, and so should Ray Serve's HTTP proxy, which otherwise buffers every byte
a client sends, however fast, before a replica reads it:
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.api.body_limit:proxy_middlewares` in the
environment Ray starts from (`make serve` and `serve_app.local` set it).
"""

from __future__ import annotations

import json
from typing import Any

from serve_app.api.errors import error_body, request_id
from tts_core.limits import MAX_BODY_BYTES, MAX_MULTIPART_BODY_BYTES


def body_limit(scope: dict[str, Any]) -> int:
    """Multipart bodies carry uploads; every other body is JSON or a small form."""
    content_type = dict(scope.get("headers") or ()).get(b"content-type", b"").lower()
    return MAX_MULTIPART_BODY_BYTES if content_type.startswith(b"multipart/form-data") else MAX_BODY_BYTES


#: The environment variable through which Ray Serve's proxy takes middlewares, and the value that installs this one.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve_app.api.body_limit:proxy_middlewares"


def proxy_middlewares() -> list[Any]:
    """The middlewares of Ray Serve's HTTP proxy (called there through `PROXY_CALLBACK_ENV`)."""
    from starlette.middleware import Middleware

    return [Middleware(RequestBodyLimit)]


class _BodyTooLarge(Exception):
    pass


class RequestBodyLimit:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return
        received, exceeded, started = 0, False, False

        async def counting_receive() -> dict:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if exceeded:  # whatever the app made of the failed read, the answer is the 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._refuse(scope, send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        # Also when the app gave up without answering (Serve's proxy, whose reads run in a task of their own).
        if exceeded and not started:
            await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope: dict, send: Any, limit: int) -> None:
        size = f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit / 2**10:g} KB"
        body = json.dumps(error_body(scope, "payload_too_large",
                                     f"The request body is larger than the {size} this kind of request may carry.",
                                     limit_bytes=limit)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-request-id", request_id(scope).encode())]})
        await send({"type": "http.response.body", "body": body})
