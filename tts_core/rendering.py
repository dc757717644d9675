"""A stream of synthesized chunks made into one stored audio file (sync requests and async tasks)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np

from tts_core.storage.blobs import BlobStore
from tts_core.stream_encoding import encode_file
from tts_core.tasks import RenderedAudio
from tts_core.wire import SynthesisChunk


async def render_to_store(chunks: AsyncIterator[SynthesisChunk], fmt: str, outputs: BlobStore, sample_rate: int,
                          on_chunk: Callable[[SynthesisChunk], None] | None = None) -> RenderedAudio:
    """Collect every chunk, encode the audio and store it. Nothing is written unless the synthesis
    runs to its end; encoding and the write run off the event loop."""
    started = time.perf_counter()
    pieces = []
    async for chunk in chunks:
        pieces.append(chunk.pcm)
        if on_chunk is not None:
            on_chunk(chunk)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    file_name = f"{uuid.uuid4().hex}.{fmt}"
    data = await asyncio.to_thread(encode_file, samples, sample_rate, fmt)
    await asyncio.to_thread(outputs.put, file_name, data)
    return RenderedAudio(file_name=file_name, duration=round(len(samples) / sample_rate, 3), format=fmt,
                         sample_rate=sample_rate, synthesis_time=round(time.perf_counter() - started, 3))
