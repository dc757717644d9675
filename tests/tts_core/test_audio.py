"""Audio decoding by content and encoding to the output formats."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
import soundfile as sf

from tests.audio_samples import m4a_bytes
from tts_core.audio import MEDIA_TYPES, AudioError, decode_audio, encode_audio, pcm16_bytes, streaming_wav_header

SR = 16000


def tone(seconds: float, sample_rate: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def soundfile_bytes(samples: np.ndarray, fmt: str, subtype: str, sample_rate: int = SR) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray, sample_rate: int = SR) -> bytes:
    return soundfile_bytes(samples, "WAV", "PCM_16", sample_rate)


ENCODERS = {
    "wav": wav_bytes,
    "flac": lambda x: soundfile_bytes(x, "FLAC", "PCM_16"),
    "ogg": lambda x: soundfile_bytes(x, "OGG", "VORBIS"),
    "mp3": lambda x: soundfile_bytes(x, "MP3", "MPEG_LAYER_III"),
    "m4a": lambda x: m4a_bytes(x, SR),  # libsndfile cannot write (or read) AAC in MP4
}


def invalid(data: bytes, **kwargs: float) -> AudioError:
    with pytest.raises(AudioError) as info:
        decode_audio(data, **kwargs)
    assert info.value.code == "invalid_audio"
    assert info.value.message == str(info.value)
    return info.value


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_decodes_each_format_by_content(fmt: str) -> None:
    # Only bytes are passed: there is no file name to go by.
    decoded = decode_audio(ENCODERS[fmt](tone(2.0)))
    assert decoded.format == fmt
    assert decoded.sample_rate == SR
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration == pytest.approx(2.0, abs=0.15)  # lossy codecs add padding
    assert 0.2 < np.abs(decoded.samples).max() < 0.4


def test_stereo_is_mixed_down_to_mono() -> None:
    left = tone(1.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    decoded = decode_audio(wav_bytes(stereo))
    assert decoded.samples.shape == (SR,)
    np.testing.assert_allclose(decoded.samples, left / 2, atol=1e-4)


@pytest.mark.parametrize("data", [b"", b"hello, this is plain text and not audio at all" * 20,
                                  np.random.default_rng(0).bytes(20000)], ids=["empty", "text", "random"])
def test_undecodable_bytes_are_invalid(data: bytes) -> None:
    invalid(data)


def test_zip_named_wav_is_invalid() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("voice.wav", wav_bytes(tone(1.0)))
    assert "could not be decoded" in invalid(buffer.getvalue()).message


def test_wav_header_claiming_more_data_than_present_decodes_what_is_there() -> None:
    data = bytearray(wav_bytes(tone(2.0)))
    data_at = data.find(b"data")
    data[4:8] = struct.pack("<I", 0xFFFFFFF0)
    data[data_at + 4:data_at + 8] = struct.pack("<I", 0x7FFFFFF0)
    decoded = decode_audio(bytes(data))
    assert decoded.duration == pytest.approx(2.0)


def test_truncated_wav_decodes_the_remaining_samples() -> None:
    data = wav_bytes(tone(2.0))
    decoded = decode_audio(data[: 44 + SR * 2])  # header + 1 s of 16-bit samples
    assert decoded.duration == pytest.approx(1.0)


def test_wav_header_without_samples_is_invalid() -> None:
    assert "no audio samples" in invalid(wav_bytes(tone(1.0))[:44]).message


def test_non_finite_samples_are_invalid() -> None:
    samples = tone(1.0)
    samples[100] = np.nan
    assert "non-finite" in invalid(soundfile_bytes(samples, "WAV", "FLOAT")).message


def test_too_short_is_invalid() -> None:
    assert "too short" in invalid(wav_bytes(tone(0.3))).message
    assert decode_audio(wav_bytes(tone(0.5))).duration == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["wav", "flac", "m4a"])
def test_too_long_is_invalid(fmt: str) -> None:
    assert "too long" in invalid(ENCODERS[fmt](tone(31.0))).message
    assert decode_audio(ENCODERS["wav"](tone(30.0))).duration == pytest.approx(30.0)


def test_duration_limits_are_parameters() -> None:
    data = wav_bytes(tone(2.0))
    assert "too long" in invalid(data, max_seconds=1.0).message
    assert "too short" in invalid(data, min_seconds=3.0).message


def test_long_file_is_rejected_from_its_header_without_decoding() -> None:
    # An hour of FLAC silence is small; decoding it all would take far longer than this test allows.
    data = soundfile_bytes(np.zeros(SR * 3600, dtype=np.float32), "FLAC", "PCM_16")
    assert "3600.00 s" in invalid(data).message


def test_encode_wav_is_16_bit_pcm_mono_riff() -> None:
    data = encode_audio(tone(1.0, 24000), 24000, "wav")
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.channels, info.samplerate, info.frames) == ("WAV", "PCM_16", 1, 24000,
                                                                                        24000)
    decoded = decode_audio(data)
    np.testing.assert_allclose(decoded.samples, tone(1.0, 24000), atol=1e-4)


def test_encode_flac_is_real_flac() -> None:
    data = encode_audio(tone(1.0, 24000), 24000, "flac")
    assert data[:4] == b"fLaC"
    decoded = decode_audio(data)
    assert decoded.format == "flac" and decoded.sample_rate == 24000
    np.testing.assert_allclose(decoded.samples, tone(1.0, 24000), atol=1e-4)


def test_encode_mp3_is_real_mp3() -> None:
    if "MP3" not in sf.available_formats():
        with pytest.raises(AudioError) as info:
            encode_audio(tone(1.0, 24000), 24000, "mp3")
        assert info.value.code == "unsupported_format"
        return
    data = encode_audio(tone(1.0, 24000), 24000, "mp3")
    assert data[:4] != b"RIFF"
    info = sf.info(io.BytesIO(data))
    assert info.format == "MP3" and info.samplerate == 24000
    assert decode_audio(data).duration == pytest.approx(1.0, abs=0.1)


def test_encode_clips_and_rejects_unknown_formats() -> None:
    loud = np.array([2.0, -2.0, np.nan, 0.5] * 1000, dtype=np.float32)
    samples, _ = sf.read(io.BytesIO(encode_audio(loud, 24000, "wav")), dtype="int16")
    assert samples[:4].tolist() == [32767, -32767, 0, 16384]
    with pytest.raises(AudioError) as info:
        encode_audio(loud, 24000, "ogg")
    assert info.value.code == "unsupported_format"


def test_media_types() -> None:
    assert MEDIA_TYPES == {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/opus",
                           "aac": "audio/aac", "pcm": "audio/pcm"}


def test_streaming_wav_header() -> None:
    header = streaming_wav_header(24000)
    assert len(header) == 44
    riff, riff_size, wave, fmt, fmt_size, pcm, channels, rate, byte_rate, align, bits, data, data_size = \
        struct.unpack("<4sI4s4sIHHIIHH4sI", header)
    assert (riff, wave, fmt, data) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert riff_size == data_size == 0xFFFFFFFF
    assert (fmt_size, pcm, channels, rate, byte_rate, align, bits) == (16, 1, 1, 24000, 48000, 2, 16)


def test_streamed_wav_is_playable() -> None:
    samples = tone(1.0, 24000)
    decoded, rate = sf.read(io.BytesIO(streaming_wav_header(24000) + pcm16_bytes(samples)), dtype="float32")
    assert rate == 24000 and len(decoded) == len(samples)


def test_pcm16_bytes() -> None:
    data = pcm16_bytes(np.array([0.0, 1.0, -1.0, 3.0, -0.5], dtype=np.float32))
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 32767, -32767, 32767, -16384]
