"""Streamed audio for the WebSocket: resampling, mu-law and the service's stream encoders, chunk by
chunk equal to all at once."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tts_core.audio import AudioError
from tts_core.pcm_stream import StreamResampler, mulaw_bytes, stream_encoder

RATE = 24000


def tone(hz: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def in_chunks(encoder, samples: np.ndarray, sizes: list[int]) -> bytes:
    out, start = [], 0
    for size in sizes:
        out.append(encoder.encode(samples[start:start + size]))
        start += size
    out.append(encoder.encode(samples[start:]))
    return b"".join(out) + encoder.flush()


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("rate", [16000, 8000])
def test_resampled_stream_keeps_length_pitch_and_level(rate) -> None:
    signal = tone(440.0, 1.3)
    resampler = StreamResampler(RATE, rate)
    out = np.concatenate([resampler.process(signal[:7001]), resampler.process(signal[7001:]), resampler.flush()])
    assert len(out) == int(np.ceil(len(signal) * rate / RATE))
    assert abs(dominant_hz(out, rate) - 440.0) < 2.0
    # Aligned in time (the filter's delay removed) and at the same level, away from the edges.
    reference = tone(440.0, 1.3, rate)[: len(out)]
    middle = slice(len(out) // 4, 3 * len(out) // 4)
    assert np.max(np.abs(out[middle] - reference[middle])) < 0.01


def test_resampling_removes_what_the_new_rate_cannot_carry() -> None:
    out = StreamResampler(RATE, 8000).process(tone(6000.0, 1.0))
    assert np.sqrt(np.mean(out[400:-400] ** 2)) < 0.01  # 6 kHz is above the 4 kHz Nyquist of 8 kHz


@pytest.mark.parametrize(("fmt", "rate"), [("pcm", 24000), ("pcm", 16000), ("pcm", 8000), ("mulaw", 8000),
                                           ("wav", 16000)])
def test_chunk_by_chunk_equals_all_at_once(fmt, rate) -> None:
    signal = tone(300.0, 0.9) + 0.1 * tone(2300.0, 0.9)
    whole = stream_encoder(fmt, rate, RATE)
    expected = whole.encode(signal) + whole.flush()
    assert in_chunks(stream_encoder(fmt, rate, RATE), signal, [1, 480, 999, 4800, 3]) == expected
    samples = int(np.ceil(len(signal) * rate / RATE))
    assert len(expected) == {"pcm": 2 * samples, "mulaw": samples, "wav": 44 + 2 * samples}[fmt]


@pytest.mark.parametrize(("fmt", "rate"), [("mp3", 16000), ("opus", 24000), ("flac", 8000), ("aac", 16000)])
def test_compressed_formats_stream_resampled_and_decode_to_the_signal(fmt, rate, tmp_path) -> None:
    import av

    signal = tone(300.0, 0.9)
    whole = stream_encoder(fmt, rate, RATE)
    expected = whole.encode(signal) + whole.flush()
    chunked = stream_encoder(fmt, rate, RATE)
    assert in_chunks(chunked, signal, [1, 480, 999, 4800, 3]) == expected
    assert chunked.samples == whole.samples == int(np.ceil(len(signal) * rate / RATE))
    with av.open(io.BytesIO(expected)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        decoded_rate = container.streams.audio[0].codec_context.sample_rate
    decoded = np.concatenate(frames)
    # Opus decodes at 48 kHz whatever it was given; the others at the stream's rate.
    assert decoded_rate == (48000 if fmt == "opus" else rate)
    assert len(decoded) / decoded_rate == pytest.approx(len(signal) / RATE, abs=0.15)  # priming, frame padding
    assert abs(dominant_hz(decoded.astype(np.float64), decoded_rate) - 300.0) < 5.0


def test_wav_stream_decodes_to_the_pcm_stream() -> None:
    signal = tone(300.0, 0.5)
    wav = stream_encoder("wav", 16000, RATE)
    pcm = stream_encoder("pcm", 16000, RATE)
    data = in_chunks(wav, signal, [2000])
    decoded, rate = sf.read(io.BytesIO(data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:40]
                                       + (len(data) - 44).to_bytes(4, "little") + data[44:]), dtype="int16")
    assert rate == 16000
    assert decoded.tobytes() == in_chunks(pcm, signal, [2000])


def test_mulaw_matches_g711() -> None:
    samples = np.array([0.0, 1 / 32767, -1 / 32767, 0.25, -0.25, 0.999, -1.0, 1e-3], dtype=np.float32)
    # What the reference 14-bit coder gives (CPython's audioop.lin2ulaw, on all 65536 inputs).
    assert list(mulaw_bytes(samples)) == [0xFF, 0xFF, 0x7E, 0x9F, 0x1F, 0x80, 0x00, 0xFB]


@pytest.mark.parametrize(("fmt", "rate"), [("mp4", 24000), ("pcm", 44100)])
def test_unsupported_formats_are_refused(fmt, rate) -> None:
    with pytest.raises(AudioError) as error:
        stream_encoder(fmt, rate, RATE)
    assert error.value.code == "unsupported_format"
