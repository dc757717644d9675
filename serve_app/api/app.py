"""The FastAPI application: routers, error handlers, and the replica's service state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from serve_app import __version__
from serve_app.api import audio, realtime, synthesis, system, tasks, voices
from serve_app.api.auth import PLAYGROUND_PATH, ApiKeyAuth, accepted_key_hashes
from serve_app.api.body_limit import RequestBodyLimit
from serve_app.api.errors import install_error_handlers
from serve_app.api.middleware import SynthesisRequestMetrics
from serve_app.api.openai.app import PREFIX as OPENAI_PREFIX
from serve_app.api.openai.app import create_openai_api
from serve_app.serving.state import ServiceState

DESCRIPTION = """CosyVoice2 text-to-speech: a voice registry, synchronous and streaming synthesis in four
modes (sft, zero-shot, cross-lingual, instruct), asynchronous tasks and audio downloads.
Every error has the body `{"error": code, "message": text, "details": {"path": ..., "request_id": ...}}`.
OpenAI's speech API is served under `/v1` (its own documentation: `/v1/docs`).
Text can also be streamed in while it is written, over the WebSocket `/api/v1/ws/synthesize`;
a web playground is at `/playground/`."""
#: The playground: static files that use the public API only.
PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"


def create_api(state: ServiceState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(state.expire_outputs_forever())
        try:
            yield
        finally:
            sweeper.cancel()

    # Collections declare both slash forms; anything else gets the error shape, not a bare redirect.
    app = FastAPI(title="CosyVoice2 TTS API", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  redirect_slashes=False)
    app.state.services = state
    install_error_handlers(app)
    app.add_middleware(RequestBodyLimit)
    app.add_middleware(SynthesisRequestMetrics)  # outside the body limit, so it also counts refused bodies
    if key_hashes := accepted_key_hashes(state.settings):
        app.add_middleware(ApiKeyAuth, key_hashes=key_hashes)
    if state.settings.cors_origins:
        # Added last, so it is outermost: browsers' preflight requests carry no key.
        app.add_middleware(CORSMiddleware, allow_origins=state.settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    for module in (system, voices, synthesis, realtime, tasks, audio):
        app.include_router(module.router)
    app.mount(OPENAI_PREFIX, create_openai_api(state))
    app.mount(PLAYGROUND_PATH, StaticFiles(directory=PLAYGROUND_DIR, html=True), name="playground")

    @app.get(PLAYGROUND_PATH, include_in_schema=False)
    async def playground_page() -> RedirectResponse:
        """The playground's address without its slash (the app redirects no other path that way)."""
        return RedirectResponse(PLAYGROUND_PATH + "/")

    return app
