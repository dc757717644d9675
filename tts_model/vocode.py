"""Mel -> 24 kHz waveform with HiFT, as stateless functions.

Upstream `CosyVoice2Model.token2wav`'s vocoder half, with the stream's HiFT caches (mel, source
and speech tails) passed in and returned instead of kept in dictionaries on a shared model object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tts_core.wire import VocoderCache

#: HiFT cache kept between streamed chunks: mel frames, and source/speech samples (8 x 480).
MEL_CACHE_LEN = 8
SOURCE_CACHE_LEN = MEL_CACHE_LEN * 480
SPEECH_WINDOW = np.hamming(2 * SOURCE_CACHE_LEN)


@dataclass
class VocodeRequest:
    """One vocoder call: a chunk of mel and its stream's HiFT state."""

    mel: np.ndarray
    cache: VocoderCache | None
    finalize: bool
    speed: float = 1.0
    seed: int = 0


def vocode(hift: Any, mel: np.ndarray, cache: VocoderCache | None, finalize: bool, speed: float = 1.0,
           seed: int = 0) -> tuple[np.ndarray, VocoderCache | None]:
    """Waveform for one chunk of mel, cross-faded with the previous chunk; returns the next cache.

    Non-final chunks hold back their last SOURCE_CACHE_LEN samples, which the next chunk fades in.
    """
    return vocode_batch(hift, [VocodeRequest(mel, cache, finalize, speed, seed)])[0]


@torch.inference_mode()
def vocode_batch(hift: Any, requests: list[VocodeRequest]) -> list[tuple[np.ndarray, VocoderCache | None]]:
    """`vocode` for many requests: those with the same number of mel frames share HiFT's passes.

    HiFT's convolutions are not causal, so a padded frame would change its neighbours: only equal
    lengths are stacked (in streaming, every chunk after the first has the same length). The
    source excitation is drawn per request from its own seed, so batching never changes a
    request's noise.
    """
    device = next(hift.parameters()).device
    mels: list[torch.Tensor] = []
    for request in requests:
        tts_mel = torch.from_numpy(np.ascontiguousarray(request.mel, dtype=np.float32)).unsqueeze(0)
        if request.speed != 1.0:
            # Upstream changes speed only in one-shot mode; streamed chunks are stretched one by one.
            tts_mel = F.interpolate(tts_mel, size=int(tts_mel.shape[2] / request.speed), mode="linear")
        if request.cache is not None:
            tts_mel = torch.concat([torch.from_numpy(request.cache.mel).unsqueeze(0), tts_mel], dim=2)
        mels.append(tts_mel)
    by_length: dict[int, list[int]] = {}
    for index, tts_mel in enumerate(mels):
        by_length.setdefault(tts_mel.shape[2], []).append(index)
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for indices in by_length.values():
        stacked = torch.concat([mels[index] for index in indices]).to(device)
        source = _excitation(hift, stacked, [requests[index] for index in indices], device)
        speech = hift.decode(x=stacked, s=source).float().cpu()
        for row, index in enumerate(indices):
            outputs[index] = speech[row: row + 1], source[row: row + 1].float().cpu()
    results = []
    for index, request in enumerate(requests):
        speech, source = outputs[index]
        if request.cache is not None:
            speech = fade_in_out(speech, torch.from_numpy(request.cache.speech).unsqueeze(0))
        if request.finalize:
            results.append((speech[0].numpy(), None))
            continue
        next_cache = VocoderCache(mel=mels[index][0, :, -MEL_CACHE_LEN:].numpy().copy(),
                                  source=source[0, :, -SOURCE_CACHE_LEN:].numpy().copy(),
                                  speech=speech[0, -SOURCE_CACHE_LEN:].numpy().copy())
        results.append((speech[0, :-SOURCE_CACHE_LEN].numpy(), next_cache))
    return results


def _excitation(hift: Any, mel: torch.Tensor, requests: list[VocodeRequest], device: torch.device) -> torch.Tensor:
    """HiFT's harmonic-plus-noise source for a batch of equal-length mels [B, 80, T].

    The F0 predictor runs batched; the source module draws random phases and noise, so it runs per
    request with the request's seed, as HiFT's own `inference` would with that seed set.
    """
    f0 = hift.f0_predictor(mel)
    upsampled = hift.f0_upsamp(f0[:, None]).transpose(1, 2)
    sources = []
    for row, request in enumerate(requests):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(request.seed)
            source, _, _ = hift.m_source(upsampled[row: row + 1])
        source = source.transpose(1, 2)
        if request.cache is not None:  # the previous chunk's source continues, avoiding a glitch
            cached = torch.from_numpy(request.cache.source).to(device, source.dtype)
            source[:, :, : cached.shape[1]] = cached
        sources.append(source)
    return torch.concat(sources)


def fade_in_out(fade_in: torch.Tensor, fade_out: torch.Tensor) -> torch.Tensor:
    """Upstream's cross-fade of the new chunk's head with the previous chunk's held-back tail."""
    from cosyvoice.utils.common import fade_in_out as upstream_fade

    return upstream_fade(fade_in, fade_out, SPEECH_WINDOW)
