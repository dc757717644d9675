"""The FastAPI app without Ray: a stand-in for the replica's service state whose pipeline answers with
seeded noise, for tests of the HTTP layer alone (keys, CORS, error shapes) on the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI

from serve_app.api.app import create_api
from serve_app.api.protocol import Health
from serve_app.serving.synthesis import SynthesisService
from serve_app.serving.voices import VoiceService
from tts_core.settings import Settings
from tts_core.voices import VoiceNotFoundError
from tts_core.wire import SynthesisChunk, SynthesisJob, VoiceFeatures

RATE = 24000
CHUNKS, CHUNK_SAMPLES, TOKENS_PER_CHUNK, TEXT_TOKENS = 3, 12000, 25, 7


class _Remote:
    def __init__(self, function: Any):
        self.remote = function


class StandInPipeline:
    """`pipeline.options(stream=True).synthesize.remote(job)`: three chunks of noise drawn from the job's seed."""

    def __init__(self) -> None:
        self.synthesize = _Remote(self._chunks)

    def options(self, **_: Any) -> StandInPipeline:
        return self

    async def _chunks(self, job: SynthesisJob) -> AsyncIterator[SynthesisChunk]:
        rng = np.random.default_rng(job.seed)
        for index in range(CHUNKS):
            yield SynthesisChunk(pcm=(0.2 * rng.standard_normal(CHUNK_SAMPLES)).astype(np.float32), segment=0,
                                 segments=1, tokens=(index + 1) * TOKENS_PER_CHUNK, text_tokens=TEXT_TOKENS,
                                 segment_done=index == CHUNKS - 1)


class StandInFrontend:
    """The front end's text check: any text is one segment of its characters."""

    def __init__(self) -> None:
        async def segments(text: str) -> list[list[int]]:
            return [[ord(character) for character in text]]

        self.text_segments = _Remote(segments)


class StandInStore:
    """The voice store with no registered voices."""

    def __init__(self) -> None:
        async def missing(voice_id: str) -> None:
            raise VoiceNotFoundError(voice_id)

        self.get_features = _Remote(missing)


class StandInState:
    def __init__(self, settings: Settings):
        self.settings = settings
        pretrained = {"pretrained_voice_001": VoiceFeatures.embedding_only(np.zeros(192, dtype=np.float32))}
        self.voices = VoiceService(StandInStore(), None, pretrained)
        self.synthesis = SynthesisService(StandInPipeline(), StandInFrontend(), self.voices, None, RATE)

    async def health(self) -> Health:
        return Health(status="healthy", voice_manager_ready=True, async_synthesis_ready=True)


def stand_in_app(**settings: Any) -> FastAPI:
    return create_api(StandInState(Settings(**settings)))
