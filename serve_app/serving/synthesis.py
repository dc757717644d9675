"""Synthesis logic shared by the sync routes and async tasks: validate, resolve the voice, run the
pipeline, then stream the PCM out or encode and store the file.

Every check a request can fail runs before it is accepted: an async task is created, or a stream's
200 sent, only for a request that passed them all."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile

from deployments.failures import replica_gone, root_cause
from serve_app.api.errors import ApiError, invalid_request, service_unavailable
from serve_app.serving.voices import VoiceService
from tts_core import stream_encoding
from tts_core.audio import AudioError
from tts_core.modes import SynthesisMode
from tts_core.rendering import render_to_store
from tts_core.storage.blobs import BlobStore
from tts_core.stream_encoding import StreamEncoder
from tts_core.tasks import RenderedAudio
from tts_core.timing import StageTimes
from tts_core.wire import FrontendError, SynthesisChunk, SynthesisJob


def check_output_format(fmt: str, stream: bool) -> None:
    """Refuse formats that cannot be produced before any work starts."""
    try:
        stream_encoding.check_output_format(fmt, stream)
    except AudioError as exc:
        raise ApiError(400, exc.code, exc.message) from exc


def synthesis_failed(exc: BaseException) -> ApiError:
    """The answer to a failed synthesis; raised `from exc`, so the error handler logs the cause."""
    cause = root_cause(exc)
    if isinstance(cause, FrontendError):
        return invalid_request(str(cause))
    if replica_gone(exc):
        return service_unavailable()
    return ApiError(500, "synthesis_error", "Synthesis failed; the server log has the details under this request's id.")


def audio_url(file_name: str) -> str:
    return f"/api/v1/audio/{file_name}"


def result_body(mode: SynthesisMode, rendered: RenderedAudio) -> dict[str, Any]:
    """The API's synthesis result for a stored file."""
    return {"success": True, "message": f"{SynthesisMode(mode).label} synthesis completed successfully",
            "audio_url": audio_url(rendered.file_name), "duration": rendered.duration, "format": rendered.format,
            "synthesis_time": rendered.synthesis_time, "sample_rate": rendered.sample_rate}


@dataclass
class EncodedStream:
    """Encoded audio as it is made, and where the time to its first chunk went."""

    chunks: AsyncIterator[bytes]
    #: `Server-Timing`: the ingress's stages and the pipeline's waits up to the first chunk.
    server_timing: str

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks

    def headers(self) -> dict[str, str]:
        return {"Server-Timing": self.server_timing}


class SynthesisService:
    def __init__(self, pipeline: Any, frontend: Any, voices: VoiceService, outputs: BlobStore, sample_rate: int):
        self.pipeline, self.frontend, self.voices = pipeline, frontend, voices
        self.outputs, self.sample_rate = outputs, sample_rate

    async def prepare(self, mode: SynthesisMode, text: str, *, voice_id: str | None = None,
                      prompt_audio: UploadFile | None = None, prompt_text: str | None = None,
                      instruct_text: str | None = None, speed: float = 1.0, fmt: str = "wav",
                      stream: bool = False, seed: int | None = None) -> SynthesisJob:
        """Every check a request can fail, in the contract's order, before any synthesis starts
        (field types and lengths were checked by the route's schema)."""
        if not text.strip():
            raise invalid_request("text must not be blank")
        check_output_format(fmt, stream)
        times = StageTimes()
        try:  # the pipeline's own first step, done here: text with nothing to speak is a 400 now
            with times.measure("text"):
                segments = await self.frontend.text_segments.remote(text)
        except Exception as exc:
            raise synthesis_failed(exc) from exc
        if mode in (SynthesisMode.ZERO_SHOT, SynthesisMode.CROSS_LINGUAL):
            # An empty form field is no voice_id; in sft/instruct an empty id is just an unknown voice (404).
            voice_id = voice_id or None
            if (voice_id is None) == (prompt_audio is None):
                raise invalid_request("give exactly one voice source: voice_id or prompt_audio")
            if mode is SynthesisMode.ZERO_SHOT and prompt_audio is not None and not (prompt_text or "").strip():
                raise invalid_request("prompt_text is required with prompt_audio in zero-shot mode")
        if mode is SynthesisMode.INSTRUCT and not (instruct_text or "").strip():
            raise invalid_request("instruct_text must not be blank")
        with times.measure("prompt"):
            if voice_id is not None or mode in (SynthesisMode.SFT, SynthesisMode.INSTRUCT):
                voice = await self.voices.features(voice_id or "")
            else:
                transcript = prompt_text if mode is SynthesisMode.ZERO_SHOT else None
                voice = await self.voices.features_from_upload(prompt_audio, transcript)
        return SynthesisJob(mode=mode, text=text, voice=voice, instruct_text=instruct_text, speed=speed,
                            stream=stream, seed=secrets.randbelow(2**31) if seed is None else seed,
                            text_segments=segments, stage_seconds=times.seconds)

    async def to_file(self, job: SynthesisJob, fmt: str) -> tuple[dict[str, Any], str]:
        """The stored file's result body, and the `Server-Timing` of every stage of the request."""
        times = StageTimes(job.stage_seconds)
        try:
            chunks = self.pipeline.options(stream=True).synthesize.remote(job)
            rendered = await render_to_store(chunks, fmt, self.outputs, self.sample_rate,
                                             on_chunk=lambda chunk: times.merge(chunk.stage_seconds))
        except Exception as exc:
            raise synthesis_failed(exc) from exc
        return result_body(job.mode, rendered), times.header()

    async def stream(self, job: SynthesisJob, fmt: str,
                     on_chunk: Callable[[SynthesisChunk], None] | None = None) -> EncodedStream:
        """`fmt` encoded as each chunk leaves the vocoder (a WAV header first, before any audio).

        The first chunk is awaited before this returns, so a synthesis that fails before any
        audio exists is an error response rather than a 200 cut short. A failure after that can
        only end the stream unfinished (no terminating chunk), which the client sees as such.
        If the client disconnects, the pipeline call is cancelled, and with it the LLM's stream.
        """
        times = StageTimes(job.stage_seconds)
        chunks = self.pipeline.options(stream=True).synthesize.remote(job)
        try:
            first = await anext(chunks, None)
        except Exception as exc:
            raise synthesis_failed(exc) from exc
        if first is not None:
            times.merge(first.stage_seconds)
        return EncodedStream(self._encoded(first, chunks, StreamEncoder(fmt, self.sample_rate), on_chunk),
                             times.header())

    @staticmethod
    async def _encoded(first: SynthesisChunk | None, chunks: AsyncIterator[SynthesisChunk], encoder: StreamEncoder,
                       on_chunk: Callable[[SynthesisChunk], None] | None) -> AsyncIterator[bytes]:
        if header := encoder.start():
            yield header
        pending = first
        while pending is not None:
            if on_chunk is not None:
                on_chunk(pending)
            # Off the event loop: a codec costs milliseconds per chunk, which other requests would wait for.
            if data := await asyncio.to_thread(encoder.encode, pending.pcm):
                yield data
            pending = await anext(chunks, None)
        if tail := await asyncio.to_thread(encoder.finish):
            yield tail
