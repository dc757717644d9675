"""The OpenAI speech API's logic: model names, voice names and speed checked the way OpenAI's
clients expect, then the shared synthesis path (`SynthesisService`), always streamed."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel

from serve_app.api.errors import ApiError
from serve_app.api.openai.errors import OpenAIError
from serve_app.api.openai.protocol import (
    MODEL_ALIASES,
    MODEL_ID,
    Model,
    ModelList,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    Usage,
    VoiceRef,
)
from serve_app.serving.synthesis import EncodedStream, SynthesisService
from serve_app.serving.voices import VoiceService
from tts_core.limits import MAX_SPEED, MIN_SPEED
from tts_core.modes import SynthesisMode
from tts_core.wire import SynthesisChunk, SynthesisJob

OWNER = "cosyvoice-serve"


def sse_event(event: BaseModel) -> bytes:
    return f"data: {event.model_dump_json()}\n\n".encode()


class SpeechService:
    def __init__(self, synthesis: SynthesisService, voices: VoiceService, voice_names: dict[str, str]):
        self.synthesis, self.voices = synthesis, voices
        self.voice_names = {name.lower(): voice_id for name, voice_id in voice_names.items()}
        self.created = int(time.time())

    def models(self) -> ModelList:
        return ModelList(data=[self.model(name) for name in (MODEL_ID, *MODEL_ALIASES)])

    def model(self, name: str) -> Model:
        if name not in (MODEL_ID, *MODEL_ALIASES):
            raise OpenAIError(404, f"The model `{name}` does not exist or you do not have access to it.",
                              param="model", code="model_not_found")
        return Model(id=name, created=self.created, owned_by=OWNER)

    def voice_id(self, voice: str | VoiceRef) -> str:
        """An OpenAI voice name through the configured map; anything else is a voice id."""
        name = voice.id if isinstance(voice, VoiceRef) else voice
        return self.voice_names.get(name.lower(), name)

    async def prepare(self, request: SpeechRequest) -> SynthesisJob:
        """Every check OpenAI's clients can fail, before any synthesis starts. With instructions the
        voice speaks in instruct mode; without, a pretrained voice in sft mode and a registered one
        zero-shot from its sample."""
        self.model(request.model)
        if not request.input.strip():
            raise OpenAIError(400, "Invalid 'input': the text to speak must not be blank.", param="input",
                              code="invalid_value")
        if not MIN_SPEED <= request.speed <= MAX_SPEED:
            raise OpenAIError(400, f"Invalid 'speed': {request.speed:g} is outside what this model produces "
                                   f"({MIN_SPEED:g}-{MAX_SPEED:g}).", param="speed", code="unsupported_value")
        voice_id = self.voice_id(request.voice)
        instructions = (request.instructions or "").strip() or None
        mode = (SynthesisMode.INSTRUCT if instructions else
                SynthesisMode.SFT if voice_id in self.voices.pretrained else SynthesisMode.ZERO_SHOT)
        try:
            return await self.synthesis.prepare(mode, request.input, voice_id=voice_id, instruct_text=instructions,
                                                speed=request.speed, fmt=request.response_format.value, stream=True,
                                                seed=request.seed)
        except ApiError as exc:
            if exc.code != "voice_not_found":
                raise
            names = ", ".join(sorted(self.voice_names))
            raise OpenAIError(400, f"Invalid 'voice': {exc.message}. Use a pretrained or registered voice id, or "
                                   f"one of the voice names mapped by the `openai_voices` setting ({names}).",
                              param="voice", code="voice_not_found") from exc

    async def audio(self, job: SynthesisJob, fmt: str) -> EncodedStream:
        """The encoded audio as it is made (once the first chunk exists)."""
        return await self.synthesis.stream(job, fmt)

    async def events(self, job: SynthesisJob, fmt: str) -> EncodedStream:
        """`speech.audio.delta` events carrying the encoded audio as it is made, then `speech.audio.done`
        (once the first chunk exists)."""
        usage = Usage(input_tokens=0, output_tokens=0, total_tokens=0)

        def count(chunk: SynthesisChunk) -> None:
            if chunk.segment_done:
                usage.input_tokens += chunk.text_tokens
                usage.output_tokens += chunk.tokens
                usage.total_tokens = usage.input_tokens + usage.output_tokens

        audio = await self.synthesis.stream(job, fmt, on_chunk=count)
        return EncodedStream(_events(audio, usage), audio.server_timing)


async def _events(audio: AsyncIterator[bytes], usage: Usage) -> AsyncIterator[bytes]:
    async for data in audio:
        yield sse_event(SpeechAudioDelta(audio=base64.b64encode(data).decode()))
    yield sse_event(SpeechAudioDone(usage=usage))
