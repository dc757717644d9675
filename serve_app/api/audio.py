"""Downloads of synthesized audio."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from serve_app.api.deps import State
from serve_app.api.errors import ApiError
from tts_core.audio import MEDIA_TYPES
from tts_core.storage.blobs import safe_name

router = APIRouter(prefix="/api/v1/audio", tags=["audio"])


@router.get("/{filename}", response_class=Response,
            responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}}})
async def download(filename: str, state: State) -> Response:
    not_found = ApiError(404, "audio_not_found", f"Audio file '{filename}' not found")
    extension = filename.rsplit(".", 1)[-1]
    try:
        safe_name(filename)
        data = await asyncio.to_thread(state.outputs.get, filename)
    except (ValueError, KeyError):
        raise not_found from None
    if extension not in MEDIA_TYPES:
        raise not_found
    return Response(data, media_type=MEDIA_TYPES[extension])
