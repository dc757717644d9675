"""Audio in and out of the service: decoding uploads by content and encoding synthesis results.

Uploads are identified by their bytes, never by their file name or declared content type, since
clients routinely send MP3 named `.wav` (and WAV named `.mp3`). libsndfile
(through soundfile) handles WAV, FLAC, MP3 and Ogg directly; everything else (M4A/AAC above all) goes
through FFmpeg, bundled with PyAV. Both paths decode incrementally and stop as soon as the audio is
known to be too long, so a long or lying file never costs more than the limit in memory.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf

from tts_core.limits import MAX_PROMPT_SECONDS, MIN_PROMPT_SECONDS

#: Content types of the formats the service produces (`pcm`: raw 16-bit little-endian mono).
MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/opus", "aac": "audio/aac",
               "pcm": "audio/pcm"}

#: Sample rates outside this range are a corrupt or hostile header, not speech.
_MIN_SAMPLE_RATE = 4000
_MAX_SAMPLE_RATE = 384000
_READ_BLOCK_FRAMES = 65536
#: soundfile's container names -> the names the API reports.
_SOUNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "MP3": "mp3", "OGG": "ogg"}
#: FFmpeg demuxer names (first alias) -> the names the API reports.
_FFMPEG_FORMATS = {"mov": "m4a", "matroska": "webm"}


class AudioError(ValueError):
    """Audio the API cannot accept or produce; `code` is the API error code (a 400 answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _DecoderRejected(Exception):
    """A decoder could not read the bytes; the next decoder gets a try."""


@dataclass
class DecodedAudio:
    """Decoded audio, mixed down to mono."""

    #: float32 mono samples, as decoded (float sources may exceed [-1, 1]).
    samples: np.ndarray
    sample_rate: int
    #: Container detected from the content: wav, flac, mp3, ogg, m4a, ...
    format: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def decode_audio(data: bytes, min_seconds: float = MIN_PROMPT_SECONDS,
                 max_seconds: float = MAX_PROMPT_SECONDS) -> DecodedAudio:
    """Decode audio bytes of any supported container to mono float32, enforcing the duration limits.

    Raises AudioError("invalid_audio") for empty or undecodable bytes, and for audio with no samples,
    non-finite samples, or a duration outside [min_seconds, max_seconds].
    """
    if not data:
        raise AudioError("invalid_audio", "Audio file is empty")
    try:
        decoded = _decode_with_soundfile(data, max_seconds)
    except _DecoderRejected:
        try:
            decoded = _decode_with_ffmpeg(data, max_seconds)
        except _DecoderRejected:
            raise AudioError("invalid_audio", "Audio file could not be decoded: unsupported or corrupt audio") from None
    if len(decoded.samples) == 0:
        raise AudioError("invalid_audio", "Audio file contains no audio samples")
    if not np.isfinite(decoded.samples).all():
        raise AudioError("invalid_audio", "Audio file contains non-finite samples")
    if decoded.duration < min_seconds:
        raise AudioError("invalid_audio",
                         f"Audio is too short: {decoded.duration:.2f} s (minimum {min_seconds:g} s)")
    return decoded


def _check_header(sample_rate: int, duration: float | None, max_seconds: float) -> None:
    """Reject a header whose sample rate is absurd or whose declared length is over the limit."""
    if not _MIN_SAMPLE_RATE <= sample_rate <= _MAX_SAMPLE_RATE:
        raise AudioError("invalid_audio", f"Audio file has an unsupported sample rate: {sample_rate} Hz")
    if duration is not None and duration > max_seconds:
        raise _too_long(duration, max_seconds)


def _too_long(duration: float, max_seconds: float) -> AudioError:
    return AudioError("invalid_audio", f"Audio is too long: {duration:.2f} s (maximum {max_seconds:g} s)")


def _collect_mono(blocks: Iterator[np.ndarray], sample_rate: int, max_seconds: float) -> np.ndarray:
    """Concatenate mono blocks, failing as soon as the total passes `max_seconds`."""
    limit = max_seconds * sample_rate
    parts: list[np.ndarray] = []
    total = 0
    for block in blocks:
        parts.append(block)
        total += len(block)
        if total > limit:
            raise _too_long(total / sample_rate, max_seconds)
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, dtype=np.float32)


def _decode_with_soundfile(data: bytes, max_seconds: float) -> DecodedAudio:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sample_rate = int(f.samplerate)
            # libsndfile clamps a WAV data size that claims more than the file holds, so `frames`
            # is what is really there; for compressed formats it is the stream header's count.
            _check_header(sample_rate, f.frames / sample_rate if f.frames > 0 else None, max_seconds)
            blocks = (block.mean(axis=1) for block in
                      f.blocks(blocksize=_READ_BLOCK_FRAMES, dtype="float32", always_2d=True))
            samples = _collect_mono(blocks, sample_rate, max_seconds)
            fmt = _SOUNDFILE_FORMATS.get(f.format, f.format.lower())
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _DecoderRejected from exc
    return DecodedAudio(samples=samples, sample_rate=sample_rate, format=fmt)


def _decode_with_ffmpeg(data: bytes, max_seconds: float) -> DecodedAudio:
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("invalid_audio", "Audio file has no audio stream")
            stream = container.streams.audio[0]
            sample_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            _check_header(sample_rate, duration, max_seconds)
            # Planar float keeps every channel separate whatever the codec's sample format, so the
            # mix-down is the same plain mean as on the soundfile path.
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)

            def blocks() -> Iterator[np.ndarray]:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().mean(axis=0)
                for out in resampler.resample(None):
                    yield out.to_ndarray().mean(axis=0)

            samples = _collect_mono(blocks(), sample_rate, max_seconds)
            fmt = container.format.name.split(",")[0]
    except av.FFmpegError as exc:
        raise _DecoderRejected from exc
    return DecodedAudio(samples=samples, sample_rate=sample_rate, format=_FFMPEG_FORMATS.get(fmt, fmt))


def _prepare(samples: np.ndarray) -> np.ndarray:
    """Flatten to mono float32, replace non-finite values and clip to [-1, 1]."""
    mono = np.asarray(samples, dtype=np.float32).reshape(-1)
    return np.clip(np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """Float samples -> little-endian signed 16-bit PCM, clipped (the body of a WAV stream)."""
    return np.round(_prepare(samples) * 32767.0).astype("<i2").tobytes()


def _wav_header(sample_rate: int, channels: int, bits: int, data_size: int, riff_size: int) -> bytes:
    block_align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align,
                                    block_align, bits)
            + b"data" + struct.pack("<I", data_size))


def streaming_wav_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length.

    The RIFF and data sizes are 0xFFFFFFFF, which players read as "until the stream ends".
    """
    return _wav_header(sample_rate, channels, bits, data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF)


def soundfile_container(fmt: str) -> tuple[str, str] | None:
    """(container, subtype) of an output format libsndfile writes, None for WAV (written here).

    Raises AudioError("unsupported_format") for other formats, and for MP3 without an encoder.
    """
    if fmt == "wav":
        return None
    if fmt == "flac":
        return "FLAC", "PCM_16"
    if fmt == "mp3":
        if "MP3" not in sf.available_formats():
            raise AudioError("unsupported_format", "MP3 output is not available on this server (no MP3 encoder)")
        return "MP3", "MPEG_LAYER_III"
    raise AudioError("unsupported_format", f"Unsupported audio format '{fmt}'; use one of wav, mp3, flac")


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode mono float samples as `wav` (16-bit PCM RIFF), `flac` or `mp3`.

    Raises AudioError("unsupported_format") for any other format, and for MP3 when the bundled
    libsndfile cannot write it or cannot at this sample rate (never renamed WAV bytes).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    fmt = fmt.lower()
    writer = soundfile_container(fmt)
    if writer is None:
        pcm = pcm16_bytes(samples)
        return _wav_header(sample_rate, 1, 16, data_size=len(pcm), riff_size=36 + len(pcm)) + pcm
    container, subtype = writer
    buffer = io.BytesIO()
    try:
        sf.write(buffer, _prepare(samples), sample_rate, format=container, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError("unsupported_format", f"Cannot encode {fmt} at {sample_rate} Hz: {exc}") from exc
    return buffer.getvalue()
