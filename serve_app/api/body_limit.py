"""A bound on request bodies, enforced as they arrive rather than after they were read.

A pure ASGI middleware: a body whose `Content-Length` is over the limit is refused before a
byte of it is read; a chunked body is counted as it is received and refused as soon as it
passes the limit. Either way the answer is 413 in the API's error shape with `Connection:
close`, so the server stops reading the rest.
"""

from __future__ import annotations

import json
from typing import Any

from serve_app.api.errors import error_body
from tts_core.limits import MAX_BODY_BYTES, MAX_MULTIPART_BODY_BYTES


def body_limit(scope: dict[str, Any]) -> int:
    """Multipart bodies carry uploads; every other body is JSON or a small form."""
    content_type = dict(scope.get("headers") or ()).get(b"content-type", b"").lower()
    return MAX_MULTIPART_BODY_BYTES if content_type.startswith(b"multipart/form-data") else MAX_BODY_BYTES


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
            if not exceeded:
                raise
            if not started:
                await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope: dict, send: Any, limit: int) -> None:
        size = f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit / 2**10:g} KB"
        body = json.dumps(error_body(scope, "payload_too_large",
                                     f"The request body is larger than the {size} this kind of request may carry.",
                                     limit_bytes=limit)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
