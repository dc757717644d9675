"""Optional API keys: with accepted key hashes configured, every route but `/health` needs a key,
as `Authorization: Bearer <key>` (what OpenAI's clients send) or `X-API-Key: <key>`.

Only SHA-256 hashes of the keys are configured, so no setting, config file or log holds a key.
A plain ASGI middleware: it never buffers a body, and answers a missing or wrong key with a 401 in
the route family's error shape (OpenAI's under `/v1`, the service's own elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request

from serve_app.api.errors import error_response
from serve_app.api.openai.app import is_openai_path
from serve_app.api.openai.errors import openai_error_response
from tts_core.settings import SHA256_HEX, Settings

#: Routes that answer without a key: load balancers and orchestrators probe them.
OPEN_PATHS = frozenset({"/health"})
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
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if self.accepts(key):
            await self.app(scope, receive, send)
            return
        message = ("Missing API key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."
                   if key is None else "Incorrect API key provided.")
        if is_openai_path(scope["path"]):
            response = openai_error_response(401, message, code="invalid_api_key", headers=CHALLENGE)
        else:
            response = error_response(Request(scope), 401, "unauthorized", message, CHALLENGE)
        await response(scope, receive, send)
