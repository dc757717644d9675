"""The OpenAI-compatible sub-application, mounted at `/v1` by the main app: its own routes, error
shape and OpenAPI document (`/v1/docs`)."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app import __version__
from serve_app.api.openai import router
from serve_app.api.openai.errors import install_openai_error_handlers
from serve_app.serving.speech import SpeechService
from serve_app.serving.state import ServiceState

PREFIX = "/v1"
DESCRIPTION = """OpenAI's speech API over CosyVoice2: `POST /v1/audio/speech` and `GET /v1/models`, for the
`openai` SDKs and the applications built on them (base URL `http://<host>:8000/v1`). Errors have OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`."""


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def create_openai_api(state: ServiceState) -> FastAPI:
    app = FastAPI(title="CosyVoice2 TTS API, OpenAI-compatible", version=__version__, description=DESCRIPTION,
                  redirect_slashes=False)
    app.state.speech = SpeechService(state.synthesis, state.voices, state.settings.openai_voices)
    install_openai_error_handlers(app)
    app.include_router(router.router)
    return app
