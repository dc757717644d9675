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


def decode_output(data: bytes, fmt: str, rate: int = 24000) -> np.ndarray:
    """Audio the service produced, decoded to mono float at `rate`. Raw 16-bit `pcm` is scaled by 1/32767, the
    inverse of the service's encoding (decoders of the other formats scale by 1/32768)."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    parts = []
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(container.streams.audio[0]):
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def alignment(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 2400) -> tuple[int, float]:
    """The lag of `reference` in `decoded` (a codec's leading delay) and the SNR (dB) of the decoded audio
    against the reference over their overlap."""
    reference, decoded = np.asarray(reference, dtype=np.float64), np.asarray(decoded, dtype=np.float64)
    lags = range(min(max_lag, len(decoded) - 1) + 1)
    scores = [np.dot(reference[:len(decoded) - lag], decoded[lag:lag + len(reference)]) for lag in lags]
    lag = int(np.argmax(scores))
    overlap = min(len(reference), len(decoded) - lag)
    error = decoded[lag:lag + overlap] - reference[:overlap]
    return lag, float(10 * np.log10(np.sum(reference[:overlap] ** 2) / max(np.sum(error ** 2), 1e-20)))
