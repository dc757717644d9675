"""The OpenAI-compatible routes (mounted at `/v1`): speech and the model list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serve_app.api.openai.protocol import ErrorResponse, Model, ModelList, ResponseFormat, SpeechRequest, StreamFormat
from serve_app.serving.speech import SpeechService
from tts_core.audio import MEDIA_TYPES


def get_speech(request: Request) -> SpeechService:
    return request.app.state.speech


Speech = Annotated[SpeechService, Depends(get_speech)]
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 500)}
SPEECH_RESPONSES = {**ERRORS, 200: {
    "content": {**{MEDIA_TYPES[fmt]: {} for fmt in ResponseFormat}, "text/event-stream": {}},
    "description": "The audio in `response_format`, chunked as it is made; or server-sent events "
                   "(`stream_format: sse`)."}}

router = APIRouter(tags=["OpenAI-compatible"])


@router.post("/audio/speech", response_class=StreamingResponse, responses=SPEECH_RESPONSES)
async def create_speech(request: SpeechRequest, speech: Speech) -> StreamingResponse:
    job = await speech.prepare(request)
    fmt = request.response_format.value
    if request.stream_format is StreamFormat.sse:
        events = await speech.events(job, fmt)
        return StreamingResponse(events, media_type="text/event-stream", headers=events.headers())
    audio = await speech.audio(job, fmt)
    return StreamingResponse(audio, media_type=MEDIA_TYPES[fmt], headers=audio.headers())


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(speech: Speech) -> ModelList:
    return speech.models()


@router.get("/models/{model}", response_model=Model, responses=ERRORS)
async def retrieve_model(model: str, speech: Speech) -> Model:
    return speech.model(model)
