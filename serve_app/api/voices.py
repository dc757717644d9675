"""Voice registry routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from serve_app.api.deps import Voices
from serve_app.api.protocol import (
    AudioFormat,
    PretrainedVoices,
    Voice,
    VoiceDeleted,
    VoiceList,
    VoiceStats,
    VoiceType,
    VoiceUpdate,
)
from tts_core.limits import VOICE_ID_PATTERN

router = APIRouter(prefix="/api/v1/voices", tags=["voices"])


@router.post("/", status_code=201, response_model=Voice)
@router.post("", status_code=201, response_model=Voice, include_in_schema=False)
async def create_voice(
    voices: Voices,
    voice_id: Annotated[str, Form(pattern=VOICE_ID_PATTERN, description="Unique id of the new voice.")],
    name: Annotated[str, Form(min_length=1, max_length=100, description="Display name.")],
    voice_type: Annotated[VoiceType, Form(description="Intended use of the voice.")],
    audio_file: Annotated[UploadFile, File(description="Voice sample: wav, mp3, flac, ogg or m4a, 0.5-30 s.")],
    description: Annotated[str | None, Form(max_length=500)] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    prompt_text: Annotated[str | None, Form(max_length=500, description="Transcript of the sample.")] = None,
    audio_format: Annotated[AudioFormat, Form(description="Storage format label.")] = AudioFormat.wav,
) -> dict:
    meta = {"voice_id": voice_id, "name": name, "voice_type": voice_type.value, "description": description or None,
            "language": language or None, "prompt_text": prompt_text or None, "audio_format": audio_format.value}
    return await voices.create(meta, audio_file)


@router.get("/", response_model=VoiceList)
@router.get("", response_model=VoiceList, include_in_schema=False)
async def list_voices(
    voices: Voices,
    voice_type: Annotated[VoiceType | None, Query(description="Only voices of this type.")] = None,
    language: Annotated[str | None, Query(max_length=16, description="Only voices with this language tag.")] = None,
    page: Annotated[int, Query(ge=1, description="Page number, from 1.")] = 1,
    page_size: Annotated[int, Query(ge=1, le=100, description="Voices per page.")] = 50,
) -> dict:
    return await voices.list(voice_type.value if voice_type else None, language, page, page_size)


@router.get("/stats/summary", response_model=VoiceStats)
async def voice_stats(voices: Voices) -> dict:
    return await voices.stats()


@router.get("/pretrained/list", response_model=PretrainedVoices)
async def pretrained_voices(voices: Voices) -> PretrainedVoices:
    names = sorted(voices.pretrained)
    return PretrainedVoices(pretrained_voices=names, total=len(names))


@router.get("/{voice_id}", response_model=Voice)
async def get_voice(voice_id: str, voices: Voices) -> dict:
    return await voices.get(voice_id)


@router.put("/{voice_id}", response_model=Voice)
async def update_voice(voice_id: str, update: VoiceUpdate, voices: Voices) -> dict:
    changes = update.model_dump(exclude_unset=True)
    # As at registration, an empty description or language means none.
    changes.update({key: None for key in ("description", "language") if changes.get(key) == ""})
    return await voices.update(voice_id, changes)


@router.delete("/{voice_id}", response_model=VoiceDeleted)
async def delete_voice(voice_id: str, voices: Voices) -> VoiceDeleted:
    await voices.delete(voice_id)
    return VoiceDeleted(message=f"Voice '{voice_id}' deleted successfully", voice_id=voice_id)
