"""Speech tokens -> mel (flow matching) -> 24 kHz waveform (HiFT), as stateless functions.

This is upstream `CosyVoice2Model.token2wav` split at its two models, with the per-stream state
(`token_offset`, HiFT's mel/source/speech caches) passed in and returned instead of kept in
dictionaries on a shared model object. Any replica can therefore serve any chunk of any stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Flow chunk in speech tokens; must match the model's training `static_chunk_size`.
TOKEN_HOP_LEN = 25
#: HiFT cache kept between streamed chunks: mel frames, and source/speech samples (8 x 480).
MEL_CACHE_LEN = 8
SOURCE_CACHE_LEN = MEL_CACHE_LEN * 480
SPEECH_WINDOW = np.hamming(2 * SOURCE_CACHE_LEN)


@dataclass
class FlowPrompt:
    """The voice side of the flow decoder's input."""

    #: Prompt speech tokens, int32 [N] (may be empty).
    speech_token: np.ndarray
    #: Prompt mel, float32 [2N, 80] (may be empty).
    speech_feat: np.ndarray
    #: Speaker embedding, float32 [192].
    embedding: np.ndarray


@dataclass
class VocoderCache:
    """HiFT state carried from one streamed chunk to the next."""

    mel: np.ndarray  # [80, MEL_CACHE_LEN]
    source: np.ndarray  # [1, SOURCE_CACHE_LEN]
    speech: np.ndarray  # [SOURCE_CACHE_LEN]


def first_hop_len(prompt_token_len: int) -> int:
    """The first streamed chunk is padded so prompt + chunk ends on a flow chunk boundary."""
    return TOKEN_HOP_LEN + math.ceil(prompt_token_len / TOKEN_HOP_LEN) * TOKEN_HOP_LEN - prompt_token_len


def chunk_seed(seed: int, segment: int, chunk: int) -> int:
    """Seed of HiFT's source noise for one chunk: the vocoder draws random phases and noise,
    so a reproducible run seeds each chunk from the request's seed."""
    return (seed * 1_000_003 + segment * 10_007 + chunk) % (2**63)


def segment_seed(seed: int, segment: int) -> int:
    """Seed of the LLM's sampling for one text segment."""
    return (seed * 1_000_003 + segment * 7_919) % (2**63)


@torch.inference_mode()
def flow_mel(flow: Any, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
             finalize: bool, token_mel_ratio: int = 2) -> np.ndarray:
    """Mel frames [80, T] for `tokens[token_offset:]`, computed over all tokens as upstream does."""
    param = next(flow.parameters())
    device, dtype = param.device, param.dtype
    token = torch.tensor([tokens], dtype=torch.int32, device=device)
    prompt_token = torch.from_numpy(np.ascontiguousarray(prompt.speech_token, dtype=np.int32)).reshape(1, -1)
    prompt_feat = torch.from_numpy(np.ascontiguousarray(prompt.speech_feat, dtype=np.float32)).reshape(1, -1, 80)
    embedding = torch.from_numpy(np.ascontiguousarray(prompt.embedding, dtype=np.float32)).reshape(1, -1)
    mel, _ = flow.inference(token=token, token_len=torch.tensor([token.shape[1]], dtype=torch.int32, device=device),
                            prompt_token=prompt_token.to(device),
                            prompt_token_len=torch.tensor([prompt_token.shape[1]], dtype=torch.int32, device=device),
                            prompt_feat=prompt_feat.to(device, dtype),
                            prompt_feat_len=torch.tensor([prompt_feat.shape[1]], dtype=torch.int32, device=device),
                            embedding=embedding.to(device, dtype), streaming=streaming, finalize=finalize)
    return mel[0, :, token_offset * token_mel_ratio:].float().cpu().numpy()


@torch.inference_mode()
def vocode(hift: Any, mel: np.ndarray, cache: VocoderCache | None, finalize: bool, speed: float = 1.0,
           seed: int = 0) -> tuple[np.ndarray, VocoderCache | None]:
    """Waveform for one chunk of mel, cross-faded with the previous chunk; returns the next cache.

    Non-final chunks hold back their last SOURCE_CACHE_LEN samples, which the next chunk fades in.
    """
    device = next(hift.parameters()).device
    tts_mel = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).unsqueeze(0)
    if speed != 1.0:
        # Upstream changes speed only in one-shot mode; streamed chunks are stretched one by one.
        tts_mel = F.interpolate(tts_mel, size=int(tts_mel.shape[2] / speed), mode="linear")
    if cache is not None:
        tts_mel = torch.concat([torch.from_numpy(cache.mel).unsqueeze(0), tts_mel], dim=2)
        cache_source = torch.from_numpy(cache.source).unsqueeze(0)
    else:
        cache_source = torch.zeros(1, 1, 0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        speech, source = hift.inference(speech_feat=tts_mel.to(device), cache_source=cache_source.to(device))
    speech, source = speech.float().cpu(), source.float().cpu()
    if cache is not None:
        speech = fade_in_out(speech, torch.from_numpy(cache.speech).unsqueeze(0))
    if finalize:
        return speech[0].numpy(), None
    next_cache = VocoderCache(mel=tts_mel[0, :, -MEL_CACHE_LEN:].numpy().copy(),
                              source=source[0, :, -SOURCE_CACHE_LEN:].numpy().copy(),
                              speech=speech[0, -SOURCE_CACHE_LEN:].numpy().copy())
    return speech[0, :-SOURCE_CACHE_LEN].numpy(), next_cache


def fade_in_out(fade_in: torch.Tensor, fade_out: torch.Tensor) -> torch.Tensor:
    """Upstream's cross-fade of the new chunk's head with the previous chunk's held-back tail."""
    from cosyvoice.utils.common import fade_in_out as upstream_fade

    return upstream_fade(fade_in, fade_out, SPEECH_WINDOW)


@dataclass
class ChunkPlan:
    """One flow + vocoder call: decode `tokens[:end]`, emitting the mel after `token_offset`."""

    end: int
    token_offset: int
    streaming: bool
    finalize: bool


@dataclass
class StreamPlanner:
    """Upstream's streaming schedule as data: when enough tokens have arrived, which chunk next.

    A chunk needs its hop of tokens plus the flow's lookahead; once the LLM is done the rest is
    decoded in one final (non-streaming, finalising) call. Without streaming, that final call is
    the only one.
    """

    prompt_token_len: int
    stream: bool
    pre_lookahead_len: int = 3
    token_offset: int = 0
    done: bool = False

    def next_chunk(self, n_tokens: int, llm_finished: bool) -> ChunkPlan | None:
        if self.done:
            return None
        if self.stream:
            hop = first_hop_len(self.prompt_token_len) if self.token_offset == 0 else TOKEN_HOP_LEN
            if n_tokens - self.token_offset >= hop + self.pre_lookahead_len:
                plan = ChunkPlan(end=self.token_offset + hop + self.pre_lookahead_len, token_offset=self.token_offset,
                                 streaming=True, finalize=False)
                self.token_offset += hop
                return plan
        if llm_finished:
            self.done = True
            return ChunkPlan(end=n_tokens, token_offset=self.token_offset, streaming=False, finalize=True)
        return None
