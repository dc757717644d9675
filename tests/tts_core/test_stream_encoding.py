"""Streamed encoding: every output format produced chunk by chunk, bytes ready after each chunk, and
the decoded stream equal to the audio that went in (exactly for the lossless formats)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio_samples import alignment, decode_output
from tests.serve_app.http_helpers import speech_like
from tts_core.audio import AudioError, encode_audio
from tts_core.stream_encoding import OUTPUT_FORMATS, StreamEncoder, check_output_format, encode_file

RATE = 24000
SIGNAL = speech_like(3.0, RATE)
#: Leading samples each lossy codec adds (encoder priming plus decoder delay), and the most it pads at the end.
LEADING = {"mp3": 1105, "aac": 1024, "opus": 0}
TRAILING = {"mp3": 1152, "aac": 2048, "opus": 0}


def streamed(fmt: str, pieces: list[np.ndarray]) -> list[bytes]:
    encoder = StreamEncoder(fmt, RATE)
    return [encoder.start(), *(encoder.encode(piece) for piece in pieces), encoder.finish()]


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_bytes_do_not_depend_on_the_chunking(fmt) -> None:
    one_piece = b"".join(streamed(fmt, [SIGNAL]))
    uneven = b"".join(streamed(fmt, np.split(SIGNAL, [100, 9000, 9001, 40000])))
    assert uneven == one_piece


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_each_chunk_is_sent_when_it_is_encoded(fmt) -> None:
    """Bytes leave after the first chunk already, and they decode to most of it (a codec keeps back
    less than a frame or two, an Ogg page at most 100 ms)."""
    first, rest = SIGNAL[:12000], SIGNAL[12000:]
    pieces = streamed(fmt, [first, rest])
    ready = pieces[0] + pieces[1]
    decoded = decode_output(ready[44:] if fmt == "wav" else ready, "pcm" if fmt == "wav" else fmt)
    assert len(decoded) >= len(first) - 0.15 * RATE, (fmt, len(decoded))


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac"])
def test_lossless_streams_decode_to_the_exact_samples(fmt) -> None:
    data = b"".join(streamed(fmt, np.array_split(SIGNAL, 7)))
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
        data, fmt = data[44:], "pcm"
    quantized = np.round(SIGNAL * 32767.0) / 32767.0
    # Within the difference of 1/32767 and decoders' 1/32768 scale: no sample is off by a step.
    np.testing.assert_allclose(decode_output(data, fmt), quantized, atol=1.5 / 32767, rtol=0)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_lossy_streams_decode_to_the_audio_within_codec_tolerance(fmt) -> None:
    data = b"".join(streamed(fmt, np.array_split(SIGNAL, 7)))
    decoded = decode_output(data, fmt)
    lag, snr = alignment(SIGNAL, decoded)
    assert lag == LEADING[fmt]
    assert len(SIGNAL) + lag <= len(decoded) <= len(SIGNAL) + lag + TRAILING[fmt]
    assert snr > 20.0, snr


def test_files_of_the_stream_formats_are_the_stream() -> None:
    for fmt in ("opus", "aac", "pcm"):
        assert encode_file(SIGNAL, RATE, fmt) == b"".join(streamed(fmt, [SIGNAL]))
    # WAV and FLAC files carry their lengths in the header, written whole.
    for fmt in ("wav", "flac"):
        assert encode_file(SIGNAL, RATE, fmt) == encode_audio(SIGNAL, RATE, fmt)


def test_unknown_formats_are_refused() -> None:
    for stream in (True, False):
        with pytest.raises(AudioError) as info:
            check_output_format("ogg", stream)
        assert info.value.code == "unsupported_format"
    with pytest.raises(AudioError):
        StreamEncoder("ogg", RATE)
