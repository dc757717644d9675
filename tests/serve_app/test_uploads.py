"""Uploads are read with a bound: a large body is refused once it passes the limit, not after."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.serving.uploads import read_limited
from tts_core.audio import AudioError
from tts_core.limits import MAX_UPLOAD_BYTES


class FakeUpload:
    """Starlette's UploadFile as `read_limited` sees it, counting what was read."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.bytes_read = 0

    async def read(self, size: int = -1) -> bytes:
        n = self.remaining if size < 0 else min(size, self.remaining)
        self.remaining -= n
        self.bytes_read += n
        return b"\0" * n


def test_read_limited_returns_the_whole_upload() -> None:
    upload = FakeUpload(3 * 1024 * 1024 + 5)
    assert len(asyncio.run(read_limited(upload, MAX_UPLOAD_BYTES))) == 3 * 1024 * 1024 + 5


def test_read_limited_stops_at_the_limit() -> None:
    upload = FakeUpload(MAX_UPLOAD_BYTES * 4)
    with pytest.raises(AudioError) as info:
        asyncio.run(read_limited(upload, MAX_UPLOAD_BYTES))
    assert info.value.code == "invalid_audio"
    assert "larger than 50 MB" in info.value.message
    assert upload.bytes_read <= MAX_UPLOAD_BYTES + 1024 * 1024


def test_read_limited_accepts_exactly_the_limit() -> None:
    assert len(asyncio.run(read_limited(FakeUpload(3000), 3000))) == 3000
    with pytest.raises(AudioError):
        asyncio.run(read_limited(FakeUpload(3001), 3000))
