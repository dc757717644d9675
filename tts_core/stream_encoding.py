"""Audio encoded while it is synthesized: one `StreamEncoder` per response, fed each chunk of PCM,
returning the bytes that are ready, so the first bytes leave after the first chunk.

WAV and raw PCM are written here. MP3, Opus (in Ogg), AAC (in ADTS) and FLAC go through FFmpeg's
encoders and muxers bundled with PyAV (libmp3lame, libopus, aac, flac), which accept audio in any
amount and keep whatever does not fill a codec frame for the next call; the muxer writes into a
sink that cannot seek, so nothing is ever rewritten after it was sent, and it flushes after every
packet. The bytes do not depend on how the audio was split into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from tts_core.audio import AudioError, encode_audio, pcm16_bytes, soundfile_container, streaming_wav_header

#: Every format the service produces, streamed or as a file.
OUTPUT_FORMATS = ("wav", "mp3", "opus", "aac", "flac", "pcm")


@dataclass(frozen=True)
class _FFmpegFormat:
    container: str
    codec: str
    bit_rate: int | None = None
    container_options: tuple[tuple[str, str], ...] = ()


_FFMPEG_FORMATS = {
    "mp3": _FFmpegFormat("mp3", "libmp3lame", 64_000),
    # Ogg collects packets into pages of up to a second by default; a 100 ms page bounds how long
    # encoded audio waits in the muxer.
    "opus": _FFmpegFormat("ogg", "libopus", 48_000, (("page_duration", "100000"),)),
    "aac": _FFmpegFormat("adts", "aac", 64_000),
    "flac": _FFmpegFormat("flac", "flac"),
}
#: Formats whose files `encode_audio` writes whole, with their lengths in the header.
_WHOLE_FILE_FORMATS = ("wav", "mp3", "flac")


class _Sink:
    """Where the muxer writes: collects bytes until taken. It has no `seek`, so FFmpeg treats the
    output as a stream and never goes back to patch a header."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def check_output_format(fmt: str, stream: bool) -> None:
    """Raise AudioError("unsupported_format") unless `fmt` can be produced, streamed or as a file."""
    if fmt not in OUTPUT_FORMATS:
        raise AudioError("unsupported_format",
                         f"Unsupported audio format '{fmt}'; use one of {', '.join(OUTPUT_FORMATS)}")
    if not stream and fmt in _WHOLE_FILE_FORMATS:
        soundfile_container(fmt)
    elif fmt in _FFMPEG_FORMATS and _FFMPEG_FORMATS[fmt].codec not in av.codecs_available:
        raise AudioError("unsupported_format",
                         f"{fmt} output is not available on this server (no {_FFMPEG_FORMATS[fmt].codec} encoder)")


class StreamEncoder:
    """Encodes one stream of mono float PCM into `fmt`, piece by piece.

    `start()` returns what can be sent before any audio (the WAV header), `encode(samples)` the
    bytes ready after those samples (possibly none), `finish()` the rest. WAV's header gives an
    unknown length (sizes 0xFFFFFFFF); `pcm` is raw 16-bit little-endian samples, as OpenAI's API
    defines it. A stream abandoned before `finish()` needs no call: the encoder is freed with it.
    """

    def __init__(self, fmt: str, sample_rate: int):
        check_output_format(fmt, stream=True)
        self.fmt, self.sample_rate = fmt, sample_rate
        self._samples_in = 0
        self._container = self._stream = self._sink = None
        if fmt in _FFMPEG_FORMATS:
            spec = _FFMPEG_FORMATS[fmt]
            self._sink = _Sink()
            # bitexact: no random Ogg serial number or encoder tag, so equal audio gives equal bytes.
            options = {"flush_packets": "1", "fflags": "+bitexact", **dict(spec.container_options)}
            self._container = av.open(self._sink, mode="w", format=spec.container, container_options=options)
            self._stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
            if spec.bit_rate:
                self._stream.bit_rate = spec.bit_rate

    def start(self) -> bytes:
        return streaming_wav_header(self.sample_rate) if self.fmt == "wav" else b""

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = pcm16_bytes(samples)
        if self._container is None or not pcm:
            return pcm
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._samples_in
        self._samples_in += frame.samples
        self._container.mux(self._stream.encode(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        """The encoder's remaining bytes; the encoder is closed afterwards."""
        if self._container is None:
            return b""
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
        return self._sink.take()


def encode_file(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole file of `fmt`. WAV, MP3 and FLAC are written with their lengths in the header; Opus
    in Ogg, AAC in ADTS and raw PCM carry none, so their files are the stream's bytes."""
    check_output_format(fmt, stream=False)
    if fmt in _WHOLE_FILE_FORMATS:
        return encode_audio(samples, sample_rate, fmt)
    encoder = StreamEncoder(fmt, sample_rate)
    return encoder.start() + encoder.encode(samples) + encoder.finish()
