"""Streamed audio for the speech WebSocket, out of the model's float PCM chunk by chunk: any of the
service's streamed formats (`stream_encoding`), resampled to 24, 16 or 8 kHz, and G.711 mu-law
for telephony.

`encode(pcm)` takes the next float32 chunk at the model's rate and returns the bytes ready to
send, `flush()` the rest once the stream ends. Encoding chunk by chunk gives the same bytes as
encoding the whole signal at once (the resampler keeps its filter state between chunks), so a
client may concatenate what it receives.
"""

from __future__ import annotations

import math

import numpy as np

from tts_core.audio import AudioError, pcm16_bytes
from tts_core.stream_encoding import OUTPUT_FORMATS, StreamEncoder

#: Output rates a stream may ask for, with the model's own (24 kHz) first.
STREAM_SAMPLE_RATES = (24000, 16000, 8000)
#: Formats a stream may ask for: the service's streamed formats, and G.711 mu-law.
STREAM_FORMATS = (*OUTPUT_FORMATS, "mulaw")
#: Half-length of the resampling filter, in input samples per output step.
_FILTER_HALF_TAPS = 16
#: G.711 mu-law on 14-bit magnitudes: clip level, bias and the upper end of each of its 8 segments.
_MULAW_CLIP, _MULAW_BIAS = 8159, 0x21
_MULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


class StreamResampler:
    """Polyphase FIR resampling of a stream by an integer ratio, exact across chunk boundaries.

    The filter's delay is removed (output sample k is at input time k * down / up) and `flush`
    pushes out the tail, so `n` input samples give `ceil(n * up / down)` output samples in all.
    """

    def __init__(self, source_rate: int, target_rate: int):
        # Imported here and in `_filter`: scipy.signal costs the ingress over a second of CPU at
        # start-up, and only a stream resampled to 16 or 8 kHz needs it.
        from scipy import signal

        divisor = math.gcd(source_rate, target_rate)
        self.up, self.down = target_rate // divisor, source_rate // divisor
        taps = 2 * _FILTER_HALF_TAPS * max(self.up, self.down) + 1
        # Zero-stuffing divides the level by `up`; the gain puts it back.
        self.taps = self.up * signal.firwin(taps, 1.0 / max(self.up, self.down), window=("kaiser", 5.0))
        self.delay = (taps - 1) // 2
        self.state = np.zeros(taps - 1)
        self.inputs = self.position = self.emitted = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        self.inputs += len(samples)
        return self._filter(np.asarray(samples, dtype=np.float64))

    def flush(self) -> np.ndarray:
        total = math.ceil(self.inputs * self.up / self.down)
        missing = self.delay + (total - 1) * self.down + 1 - self.position
        return self._filter(np.zeros(max(0, math.ceil(missing / self.up))), limit=total)

    def _filter(self, samples: np.ndarray, limit: int | None = None) -> np.ndarray:
        from scipy.signal import lfilter

        upsampled = np.zeros(len(samples) * self.up)
        upsampled[::self.up] = samples
        filtered, self.state = lfilter(self.taps, 1.0, upsampled, zi=self.state)
        start, self.position = self.position, self.position + len(filtered)
        # Output k is the filtered sample at delay + k * down.
        following = self.delay + self.emitted * self.down
        picked = filtered[following - start::self.down] if following < self.position else filtered[:0]
        if limit is not None:
            picked = picked[:max(0, limit - self.emitted)]
        self.emitted += len(picked)
        return picked.astype(np.float32)


def mulaw_bytes(samples: np.ndarray) -> bytes:
    """Float samples -> G.711 mu-law bytes (8-bit telephony), computed as the reference 14-bit coder does."""
    value = np.frombuffer(pcm16_bytes(samples), dtype="<i2").astype(np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), _MULAW_CLIP) + _MULAW_BIAS
    segment = np.searchsorted(_MULAW_SEGMENT_ENDS, magnitude)
    code = np.where(segment >= len(_MULAW_SEGMENT_ENDS), 0x7F,
                    (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8).tobytes()


class ResampledStreamEncoder:
    """One stream of `fmt` at `sample_rate` out of float PCM at `source_rate`: resampled, then
    `mulaw_bytes` for `mulaw`, any other format through `stream_encoding.StreamEncoder`."""

    def __init__(self, fmt: str, sample_rate: int, source_rate: int):
        if fmt not in STREAM_FORMATS:
            raise AudioError("unsupported_format",
                             f"Unsupported stream format '{fmt}'; use one of {', '.join(STREAM_FORMATS)}")
        if sample_rate not in STREAM_SAMPLE_RATES:
            raise AudioError("unsupported_format", f"Unsupported sample rate {sample_rate}; use one of "
                             f"{', '.join(map(str, STREAM_SAMPLE_RATES))}")
        self.fmt, self.sample_rate = fmt, sample_rate
        self.resampler = StreamResampler(source_rate, sample_rate) if sample_rate != source_rate else None
        self.encoder = None if fmt == "mulaw" else StreamEncoder(fmt, sample_rate)
        self.header = self.encoder.start() if self.encoder else b""
        #: Samples (at `sample_rate`) encoded so far.
        self.samples = 0

    def encode(self, pcm: np.ndarray) -> bytes:
        samples = self.resampler.process(pcm) if self.resampler else np.asarray(pcm, dtype=np.float32)
        return self._bytes(samples)

    def flush(self) -> bytes:
        """The rest of the stream: the resampler's last samples and the encoder's buffered frames."""
        tail = self._bytes(self.resampler.flush()) if self.resampler else self._bytes(np.zeros(0, np.float32))
        return tail + (self.encoder.finish() if self.encoder else b"")

    def _bytes(self, samples: np.ndarray) -> bytes:
        self.samples += len(samples)
        body = mulaw_bytes(samples) if self.encoder is None else self.encoder.encode(samples)
        header, self.header = self.header, b""
        return header + body


def stream_encoder(fmt: str, sample_rate: int, source_rate: int) -> ResampledStreamEncoder:
    """The encoder of one streamed format (AudioError `unsupported_format` for others)."""
    return ResampledStreamEncoder(fmt, sample_rate, source_rate)
