"""Uploaded files, read with a bound."""

from __future__ import annotations

from fastapi import UploadFile

from tts_core.audio import AudioError
from tts_core.limits import MAX_UPLOAD_BYTES

_UPLOAD_CHUNK_BYTES = 1024 * 1024


async def read_limited(upload: UploadFile, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """Read an uploaded file, giving up as soon as it passes `max_bytes` rather than buffering it all."""
    parts: list[bytes] = []
    total = 0
    while chunk := await upload.read(_UPLOAD_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise AudioError("invalid_audio", f"Audio file is larger than {max_bytes / (1024 * 1024):g} MB")
        parts.append(chunk)
    return b"".join(parts)
