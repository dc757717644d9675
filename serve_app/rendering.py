"""Turning a stream of synthesized chunks into a stored audio file and its API response body.

Used by the sync routes (in the ingress) and by async tasks (in the pipeline deployment).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from serve_app.audio_io import encode_audio
from serve_app.storage import BlobStore

MODE_LABELS = {"sft": "SFT", "zero_shot": "Zero-shot", "cross_lingual": "Cross-lingual", "instruct": "Instruct"}


async def render_to_store(chunks: AsyncIterator[Any], mode: str, fmt: str, outputs: BlobStore, sample_rate: int,
                          on_chunk: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Collect every chunk, encode the audio, store it; returns the sync synthesis response body.

    Nothing is written unless the synthesis runs to its end.
    """
    started = time.perf_counter()
    pieces = []
    async for chunk in chunks:
        pieces.append(chunk.pcm)
        if on_chunk is not None:
            on_chunk(chunk)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    filename = f"{uuid.uuid4().hex}.{fmt}"
    outputs.put(filename, encode_audio(samples, sample_rate, fmt))
    return {"success": True, "message": f"{MODE_LABELS[str(mode)]} synthesis completed successfully",
            "audio_url": f"/api/v1/audio/{filename}", "duration": round(len(samples) / sample_rate, 3),
            "format": fmt, "synthesis_time": round(time.perf_counter() - started, 3), "sample_rate": sample_rate}
