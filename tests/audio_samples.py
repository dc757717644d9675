"""Audio files for tests that libsndfile cannot write."""

from __future__ import annotations

import io

import av
import numpy as np


def m4a_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples as AAC in an MP4 (M4A) container, encoded with PyAV's FFmpeg."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[start:start + 1024].reshape(1, -1).astype(np.float32),
                                               format="flt", layout="mono")
            frame.sample_rate = sample_rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
