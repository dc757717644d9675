"""A deterministic, speech-like test signal: the twin's built-in voices, test prompts and the
benchmark's uploaded prompt are all made of it, so none of them needs a recording."""

from __future__ import annotations

import numpy as np

from tts_core.audio import encode_audio


def speech_like(seconds: float, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Voiced harmonics around `f0` with vibrato and a syllable-rate envelope, plus a little
    noise drawn from `rng`; float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 4
    signal = voice * envelope + 0.01 * rng.standard_normal(t.size)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def speech_like_wav(seconds: float, sample_rate: int = 16000, f0: float = 150.0, seed: int = 0) -> bytes:
    """`speech_like` as a 16-bit PCM mono WAV file, the same bytes for the same arguments."""
    return encode_audio(speech_like(seconds, sample_rate, f0, np.random.default_rng(seed)), sample_rate, "wav")
