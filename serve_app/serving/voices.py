"""Voice registry logic: registration (decode, extract features once), lookups, pretrained voices."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import UploadFile

from deployments.failures import root_cause
from serve_app.api.errors import ApiError, invalid_request, voice_exists, voice_not_found
from serve_app.serving.uploads import read_limited
from tts_core.audio import AudioError, DecodedAudio, decode_audio
from tts_core.voices import VoiceExistsError, VoiceNotFoundError
from tts_core.wire import FrontendError, VoiceFeatures


def audio_error(exc: AudioError | FrontendError) -> ApiError:
    cause = root_cause(exc)  # a front end error arrives wrapped in Ray's, whose text is a traceback
    return ApiError(400, getattr(cause, "code", "invalid_audio"), getattr(cause, "message", str(cause)))


class VoiceService:
    """Registered voices live in the voice-store actor; pretrained ones come from the model."""

    def __init__(self, store: Any, frontend: Any, pretrained: dict[str, VoiceFeatures]):
        self.store, self.frontend, self.pretrained = store, frontend, pretrained

    async def decode_upload(self, upload: UploadFile) -> tuple[bytes, DecodedAudio]:
        """Read (bounded) and decode an uploaded sample by its content."""
        try:
            data = await read_limited(upload)
            return data, await asyncio.to_thread(decode_audio, data)
        except AudioError as exc:
            raise audio_error(exc) from exc

    async def features_from_upload(self, upload: UploadFile, prompt_text: str | None) -> VoiceFeatures:
        _, audio = await self.decode_upload(upload)
        return await self.extract(audio, prompt_text)

    async def extract(self, audio: DecodedAudio, prompt_text: str | None) -> VoiceFeatures:
        try:
            return await self.frontend.extract_voice.remote(audio.samples, audio.sample_rate, prompt_text)
        except FrontendError as exc:
            raise audio_error(exc) from exc

    async def create(self, meta: dict[str, Any], upload: UploadFile) -> dict[str, Any]:
        voice_id = meta["voice_id"]
        if voice_id in self.pretrained or await self.store.exists.remote(voice_id):
            raise voice_exists(voice_id)
        if meta["voice_type"] == "zero_shot" and not (meta.get("prompt_text") or "").strip():
            raise invalid_request("prompt_text is required for a zero_shot voice")
        data, audio = await self.decode_upload(upload)
        features = await self.extract(audio, meta.get("prompt_text"))
        record = dict(meta, file_size=len(data), duration=round(audio.duration, 3), sample_rate=audio.sample_rate)
        try:
            return await self.store.create.remote(record, features, data, audio.format)
        except VoiceExistsError as exc:  # a concurrent registration of the same id won
            raise voice_exists(voice_id) from exc

    async def get(self, voice_id: str) -> dict[str, Any]:
        try:
            return await self.store.get.remote(voice_id)
        except VoiceNotFoundError as exc:
            raise voice_not_found(voice_id) from exc

    async def list(self, voice_type: str | None, language: str | None, page: int, page_size: int) -> dict[str, Any]:
        return await self.store.list.remote(voice_type, language, page, page_size)

    async def update(self, voice_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.store.update.remote(voice_id, changes)
        except VoiceNotFoundError as exc:
            raise voice_not_found(voice_id) from exc

    async def delete(self, voice_id: str) -> None:
        try:
            await self.store.delete.remote(voice_id)
        except VoiceNotFoundError as exc:
            raise voice_not_found(voice_id) from exc

    async def stats(self) -> dict[str, Any]:
        return await self.store.stats.remote()

    async def features(self, voice_id: str) -> VoiceFeatures:
        """Features of a pretrained or registered voice, computed when it was registered."""
        if voice_id in self.pretrained:
            return self.pretrained[voice_id]
        try:
            return await self.store.get_features.remote(voice_id)
        except VoiceNotFoundError as exc:
            raise voice_not_found(voice_id) from exc
