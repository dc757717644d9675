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

#: Euler steps of the flow-matching decoder, as upstream's `CausalMaskedDiffWithXvec.inference` takes.
FLOW_TIMESTEPS = 10
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


@dataclass
class FlowRequest:
    """One flow call: mel frames for `tokens[token_offset:]`, the earlier tokens giving context."""

    tokens: list[int]
    prompt: FlowPrompt
    token_offset: int
    #: Chunk-causal attention (streamed chunks) or full attention (whole utterance, final chunk).
    streaming: bool
    #: The last call of a stream: no lookahead tokens are held back.
    finalize: bool


@dataclass
class EncodedFlowInput:
    """One request's decoder inputs, `[channels, frames]` each, and which frames it keeps."""

    mu: torch.Tensor
    cond: torch.Tensor
    spks: torch.Tensor
    first_kept_frame: int


def flow_mel(flow: Any, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
             finalize: bool, token_mel_ratio: int = 2) -> np.ndarray:
    """Mel frames [80, T] for `tokens[token_offset:]`, computed over all tokens as upstream does."""
    request = FlowRequest(tokens, prompt, token_offset, streaming, finalize)
    return flow_mel_batch(flow, [request], token_mel_ratio)[0]


@torch.inference_mode()
def flow_mel_batch(flow: Any, requests: list[FlowRequest], token_mel_ratio: int = 2) -> list[np.ndarray]:
    """`flow_mel` for many requests, their flow-matching decoder passes batched.

    Upstream's `CausalMaskedDiffWithXvec.inference` and Euler solver take one utterance. Here each
    request is encoded alone (about 2% of the flow's work), then the decoder's ten classifier-free
    guided estimator passes run on all requests at once, right-padded to a common length. The
    estimator's convolutions are causal and padded keys are masked out of attention, so padding
    never reaches a real frame: each request gets the mel it would get alone.
    """
    mels: list[np.ndarray | None] = [None] * len(requests)
    for streaming in (False, True):  # the two attention masks cannot share one estimator pass
        members = [index for index, request in enumerate(requests) if request.streaming == streaming]
        encoded = {index: encode_flow_input(flow, requests[index], token_mel_ratio) for index in members}
        for group in padding_groups([encoded[index].mu.shape[1] for index in members]):
            indices = [members[position] for position in group]
            decoded = _decode(flow, [encoded[index] for index in indices], streaming)
            for index, mel in zip(indices, decoded, strict=True):
                mels[index] = mel
    return mels  # type: ignore[return-value]


def padding_groups(lengths: list[int], max_padding: float = 0.25) -> list[list[int]]:
    """Split positions into batches of similar length: every batch's padded size stays within
    `max_padding` of its real size, since on every device padded frames cost as much as real ones."""
    groups: list[list[int]] = []
    real = 0
    for position in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[position]
        if groups and (len(groups[-1]) + 1) * length <= (1 + max_padding) * (real + length):
            groups[-1].append(position)
            real += length
        else:
            groups.append([position])
            real = length
    return groups


def encode_flow_input(flow: Any, request: FlowRequest, token_mel_ratio: int) -> EncodedFlowInput:
    """The text-encoder half of upstream's flow inference, for one request."""
    param = next(flow.parameters())
    device, dtype = param.device, param.dtype
    prompt = request.prompt
    prompt_token = torch.from_numpy(np.ascontiguousarray(prompt.speech_token, dtype=np.int32)).reshape(1, -1)
    prompt_feat = torch.from_numpy(np.ascontiguousarray(prompt.speech_feat, dtype=np.float32)).reshape(-1, 80)
    embedding = torch.from_numpy(np.ascontiguousarray(prompt.embedding, dtype=np.float32)).reshape(1, -1)
    token = torch.concat([prompt_token, torch.tensor([request.tokens], dtype=torch.int32)], dim=1).to(device)
    token_len = torch.tensor([token.shape[1]], dtype=torch.int32, device=device)
    spks = flow.spk_embed_affine_layer(F.normalize(embedding.to(device, dtype), dim=1))[0]
    embedded = flow.input_embedding(torch.clamp(token, min=0))
    if request.finalize:
        h, _ = flow.encoder(embedded, token_len, streaming=request.streaming)
    else:  # the last tokens are only the lookahead of the frames before them
        lookahead = flow.pre_lookahead_len
        h, _ = flow.encoder(embedded[:, :-lookahead], token_len, context=embedded[:, -lookahead:],
                            streaming=request.streaming)
    mu = flow.encoder_proj(h)[0].transpose(0, 1)
    cond = torch.zeros_like(mu)
    cond[:, : prompt_feat.shape[0]] = prompt_feat.transpose(0, 1).to(device, dtype)
    return EncodedFlowInput(mu=mu, cond=cond, spks=spks,
                             first_kept_frame=prompt_feat.shape[0] + request.token_offset * token_mel_ratio)


def _decode(flow: Any, inputs: list[EncodedFlowInput], streaming: bool) -> list[np.ndarray]:
    """Upstream's classifier-free guided Euler solver over a right-padded batch.

    The batch holds every request twice: conditioned, then with mu, speaker and prompt zeroed.
    """
    cfm = flow.decoder
    mu0 = inputs[0].mu
    device, dtype = mu0.device, mu0.dtype
    batch, frames = len(inputs), max(item.mu.shape[1] for item in inputs)
    mask = torch.zeros(2 * batch, 1, frames, device=device, dtype=dtype)
    mu = torch.zeros(2 * batch, mu0.shape[0], frames, device=device, dtype=dtype)
    cond = torch.zeros_like(mu)
    spks = torch.zeros(2 * batch, inputs[0].spks.shape[0], device=device, dtype=dtype)
    for row, item in enumerate(inputs):
        length = item.mu.shape[1]
        mask[row, :, :length] = mask[batch + row, :, :length] = 1
        mu[row, :, :length], cond[row, :, :length], spks[row] = item.mu, item.cond, item.spks
    # Upstream's fixed noise: every utterance starts from the same prefix of it.
    x = cfm.rand_noise[:, :, :frames].to(device, dtype).expand(batch, -1, -1)
    t_span = euler_time_span(cfm, device, dtype)
    t, dt = t_span[0], t_span[1] - t_span[0]
    for step in range(1, len(t_span)):
        velocity = cfm.estimator(torch.concat([x, x]), mask, mu, t.expand(2 * batch), spks, cond,
                                 streaming=streaming)
        conditioned, unconditioned = velocity.split(batch)
        x = x + dt * ((1.0 + cfm.inference_cfg_rate) * conditioned - cfm.inference_cfg_rate * unconditioned)
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
    mel = x.float().cpu()
    return [mel[row, :, item.first_kept_frame: item.mu.shape[1]].numpy()
            for row, item in enumerate(inputs)]


def euler_time_span(cfm: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The CFM's Euler time points, as upstream's `CausalConditionalCFM.forward` builds them."""
    t_span = torch.linspace(0, 1, FLOW_TIMESTEPS + 1, device=device, dtype=dtype)
    if cfm.t_scheduler == "cosine":
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    return t_span


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
