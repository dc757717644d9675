"""Optional API keys: with accepted key hashes configured, every route but `/health` and the
playground's static files needs a key, as `Authorization: Bearer <key>` (what OpenAI's clients
send) or `X-API-Key: <key>`. WebSocket handshakes take the same headers; a browser, which cannot
set headers on a WebSocket, gives the key as the query parameter `api_key` instead.

Only SHA-256 hashes of the keys are configured, so no setting, config file or log holds a key.
A plain ASGI middleware: it never buffers a body, and answers a missing or wrong key with a 401 in
the route family's error shape (OpenAI's under `/v1`, the service's own elsewhere); a WebSocket
without a valid key is accepted, sent that error as a JSON event and closed with 1008 (policy
violation), so a client sees why rather than a failed handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request

from serve_app.api.errors import error_body, error_response
from serve_app.api.openai.app import is_openai_path
from serve_app.api.openai.errors import openai_error_response
from tts_core.settings import SHA256_HEX, Settings

#: Routes that answer without a key: load balancers and orchestrators probe them.
OPEN_PATHS = frozenset({"/health"})
#: The playground's static files: a page holds no secret and a browser loads it without a key;
#: the key is asked for on the page and sent with each of its API calls.
PLAYGROUND_PATH = "/playground"
#: The query parameter that carries the key of a browser's WebSocket handshake.
WEBSOCKET_KEY_PARAM = "api_key"
#: RFC 6455 close code of a WebSocket refused for its key.
POLICY_VIOLATION = 1008
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def accepted_key_hashes(settings: Settings) -> frozenset[str]:
    """The configured hashes and those of `api_key_file` (one a line, `#` starts a comment)."""
    hashes = set(settings.api_key_hashes)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"api_key_file {path} cannot be read: {exc.strerror}") from exc
        for number, line in enumerate(lines, 1):
            value = line.split("#", 1)[0].strip().lower()
            if value and not SHA256_HEX.fullmatch(value):
                raise ValueError(f"api_key_file {path}, line {number}: not a hex SHA-256 digest")
            if value:
                hashes.add(value)
    return frozenset(hashes)


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path == PLAYGROUND_PATH or path.startswith(PLAYGROUND_PATH + "/")


def presented_key(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


class ApiKeyAuth:
    def __init__(self, app: Any, key_hashes: frozenset[str]):
        self.app, self.key_hashes = app, key_hashes

    def accepts(self, key: str | None) -> bool:
        if key is None:
            return False
        digest = hashlib.sha256(key.encode()).hexdigest()
        # Compared with every hash, in constant time each: the answer's timing tells nothing.
        return sum(hmac.compare_digest(digest, accepted) for accepted in self.key_hashes) > 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key is None and scope["type"] == "websocket":
            key = QueryParams(scope.get("query_string", b"")).get(WEBSOCKET_KEY_PARAM) or None
        if self.accepts(key):
            await self.app(scope, receive, send)
            return
        message = ("Missing API key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."
                   if key is None else "Incorrect API key provided.")
        if scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send, message)
            return
        if is_openai_path(scope["path"]):
            response = openai_error_response(401, message, code="invalid_api_key", headers=CHALLENGE)
        else:
            response = error_response(Request(scope), 401, "unauthorized", message, CHALLENGE)
        await response(scope, receive, send)


async def refuse_websocket(scope: dict, receive: Any, send: Any, message: str) -> None:
    """Accept the handshake, send the 401's error body as an `error` event, close with 1008."""
    if (await receive())["type"] != "websocket.connect":
        return
    body = {"type": "error", **error_body(scope, "unauthorized", message)}
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(body)})
    await send({"type": "websocket.close", "code": POLICY_VIOLATION})
