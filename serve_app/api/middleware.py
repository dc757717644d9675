"""Request metrics, as a plain ASGI middleware (it never buffers or wraps the body, so streamed
responses and client disconnects pass straight through)."""

from __future__ import annotations

import re
from typing import Any

from deployments.metrics import metric
from tts_core.modes import SynthesisMode

SYNTHESIS_PATH = re.compile(rf"^/api/v1/(?:async/)?synthesize/({'|'.join(mode.path for mode in SynthesisMode)})/?$")


def outcome(status: int) -> str:
    return "success" if status < 400 else "client_error" if status < 500 else "server_error"


class SynthesisRequestMetrics:
    """Counts synthesis requests (sync and async submissions) by mode and outcome."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        match = SYNTHESIS_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            metric("cosyvoice_requests_total").inc(
                tags={"mode": match.group(1).replace("-", "_"), "outcome": outcome(status)})
