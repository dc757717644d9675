"""Streamed flow decoding whose per-chunk cost does not grow with the utterance.

`token2wav.flow_mel` decodes a streamed chunk as upstream does: the whole flow model runs over the
prompt and every token so far, and only the new mel frames are kept. In streaming mode the model
is chunk-causal, so the frames before the new chunk come out the same every time:

* the encoder attends within 25-token (50-frame) chunks and to all earlier chunks, and sees at
  most 3 tokens ahead (the pre-lookahead, which the streaming schedule always supplies);
* the CFM starts from fixed noise indexed by frame position and takes the same 10 Euler steps,
  each with a conditional and an unconditional (zeroed mu, speaker and prompt) estimator pass;
* the estimator (`CausalConditionalDecoder`) has causal convolutions (kernel 3) and attention that
  sees its own 50-frame chunk and every earlier one.

So a new chunk needs from the earlier frames only, per Euler step and CFG branch, the keys and
values of every transformer block and the last `kernel - 1` inputs of every causal convolution.
`flow_mel_incremental` keeps those in a `FlowStreamCache` and runs the estimator on the new
frames alone. The encoder is about 2% of the flow's work and is simply rerun over all tokens.

The same causality makes the state of the prompt's first frames a property of the voice alone:
a frame's state depends on the tokens up to the end of its attention chunk plus the lookahead,
on the prompt's mel and speaker embedding, and on the fixed noise of its position. `prompt_state`
computes the state of the prompt's whole chunks that end at least a lookahead before the
prompt does, once per voice; every stream of that voice then starts from it (`prefix`), holds
only the frames after it, and skips decoding them.

Streamed chunks (streaming=True) are covered, the last one (finalize=True: no lookahead held
back) included. Upstream decodes a stream's last chunk with full attention over the whole
utterance instead; that stays a full recompute with `flow_mel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tts_core.wire import FlowPrompt
from tts_model.flow_decode import (
    FLOW_TIMESTEPS,
    FlowRequest,
    StepHook,
    encode_flow_input,
    euler_time_span,
    guidance_branches_apart,
    guidance_branches_apart_pays,
)


@dataclass
class FlowStreamCache:
    """What the estimator needs of a stream's earlier mel frames to decode the next ones.

    Covers the first `frames` frames of the stream (prompt frames included); `frames` is always a
    multiple of the estimator's attention chunk, because a frame's state is only final once the
    rest of its chunk is known. Tensors are in the flow model's dtype and on its device. Each
    chunk writes its keys and values into buffers grown ahead of need, so a chunk never copies
    the state of the ones before it (past a few hundred frames that copy costs more than the
    chunk's own attention). A decoded chunk updates the cache in place. The frames before
    `base` are the voice's shared `prefix`, read and never written: the buffers start at `base`.
    """

    #: Frames covered, counted from the first prompt frame.
    frames: int
    #: Attention keys and values of frames `base` onwards, [steps, transformer blocks, 2 (CFG),
    #: heads, capacity, head dim]; frames past `frames` are scratch.
    key_buffer: torch.Tensor
    value_buffer: torch.Tensor
    #: The inputs of the last frames of each causal convolution, in network order:
    #: [steps, 2 (CFG), channels, kernel - 1] each.
    conv_tails: list[torch.Tensor] = field(default_factory=list)
    #: The state of the voice's first frames, shared by its streams (`prompt_state`).
    prefix: FlowStreamCache | None = None

    @property
    def base(self) -> int:
        return self.prefix.frames if self.prefix is not None else 0

    @property
    def keys(self) -> torch.Tensor:
        return self.key_buffer[..., : self.frames - self.base, :]

    @property
    def values(self) -> torch.Tensor:
        return self.value_buffer[..., : self.frames - self.base, :]

    @property
    def nbytes(self) -> int:
        """This stream's own bytes: a shared prefix is counted where it is kept."""
        tensors = [self.key_buffer, self.value_buffer, *self.conv_tails]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def reserve(self, frames: int, growth: float = 1.5) -> None:
        """Make room for `frames` frames, growing geometrically so copies stay rare."""
        capacity = self.key_buffer.shape[4]
        frames -= self.base
        if frames <= capacity:
            return
        capacity = max(frames, int(capacity * growth))
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:4], capacity, old.shape[5])
            new[..., : self.frames - self.base, :] = old[..., : self.frames - self.base, :]
            setattr(self, name, new)


class _StepState:
    """One estimator pass over the new frames: reads the cached state of one Euler step and
    collects the state of the frames before `keep_until` for the next chunk.

    Convolutions and transformer blocks take their cached entries in the order the network
    calls them, so the walk below needs no names for them.
    """

    def __init__(self, first: int, keep_until: int, attn_mask: torch.Tensor, cache: FlowStreamCache, step: int,
                 rows: slice = slice(None)):
        """`rows`: the CFG rows this pass computes (both, or one guidance branch)."""
        self.first, self.keep_until, self.attn_mask, self.base = first, keep_until, attn_mask, cache.base
        #: This step's key and value buffers, [blocks, rows, heads, capacity, head dim]: written in place.
        self.keys, self.values = cache.key_buffer[step][:, rows], cache.value_buffer[step][:, rows]
        self.tails = [tail[step][rows] for tail in cache.conv_tails]
        #: The shared prefix's keys and values of this step, [blocks, rows, heads, base, head dim].
        self.prefix = ((cache.prefix.keys[step][:, rows], cache.prefix.values[step][:, rows])
                       if cache.prefix is not None else None)
        self.blocks_done = 0
        self.new_tails: list[torch.Tensor] = []

    def causal_conv(self, conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """`CausalConv1d` on the new frames: the cached inputs of earlier frames stand in for its
        left zero padding (they are zeros at the start of the stream)."""
        padded = torch.cat([self.tails[len(self.new_tails)], x], dim=2)
        # padded[:, :, i] is the input of frame first - pad + i.
        keep = self.keep_until - self.first
        self.new_tails.append(padded[:, :, keep:keep + conv.causal_padding])
        return F.conv1d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    def attend(self, attn: Any, hidden: torch.Tensor) -> torch.Tensor:
        """diffusers `Attention` (AttnProcessor2_0) over cached and new frames; hidden [2, N, C]."""
        batch = hidden.shape[0]
        query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (tensor.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                             for tensor in (query, key, value))
        block, first, end = self.blocks_done, self.first - self.base, self.first + key.shape[2] - self.base
        self.blocks_done += 1
        self.keys[block, :, :, first:end] = key
        self.values[block, :, :, first:end] = value
        key, value = self.keys[block, :, :, :end], self.values[block, :, :, :end]
        if self.prefix is None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=self.attn_mask)
        else:
            out = _attend_after_prefix(query, self.prefix[0][block], self.prefix[1][block], key, value,
                                       self.attn_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _attend_after_prefix(query: torch.Tensor, prefix_keys: torch.Tensor, prefix_values: torch.Tensor,
                         keys: torch.Tensor, values: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over the prefix's frames, then the stream's own, without
    joining the two (that copy would cost more than the attention); `attn_mask` covers both."""
    scale = query.shape[-1] ** -0.5
    scores = torch.cat([query @ prefix_keys.transpose(-1, -2), query @ keys.transpose(-1, -2)], dim=-1) * scale
    weights = scores.masked_fill(~attn_mask, float("-inf")).softmax(dim=-1)
    split = prefix_keys.shape[-2]
    return weights[..., :split] @ prefix_values + weights[..., split:] @ values


def _causal_block(state: _StepState, block: Any, x: torch.Tensor) -> torch.Tensor:
    """`CausalBlock1D`: causal conv, LayerNorm over channels, Mish. The padding mask upstream
    multiplies by is all ones for a single utterance, so it is left out."""
    conv, _, norm, _, act = block.block
    x = state.causal_conv(conv, x)
    return act(norm(x.transpose(1, 2)).transpose(1, 2))


def _resnet(state: _StepState, resnet: Any, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    h = _causal_block(state, resnet.block1, x)
    h = h + resnet.mlp(t_emb).unsqueeze(-1)
    h = _causal_block(state, resnet.block2, h)
    return h + resnet.res_conv(x)


def _transformers(state: _StepState, blocks: Any, x: torch.Tensor) -> torch.Tensor:
    """matcha `BasicTransformerBlock`s (layer norms, self-attention, feed-forward) on [2, C, N]."""
    x = x.transpose(1, 2)
    for block in blocks:
        x = x + state.attend(block.attn1, block.norm1(x))
        x = x + block.ff(block.norm3(x))
    return x.transpose(1, 2)


def _estimate(state: _StepState, estimator: Any, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
              spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """`CausalConditionalDecoder.forward(streaming=True)` on the new frames only."""
    t_emb = estimator.time_mlp(estimator.time_embeddings(t).to(t.dtype))
    x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[2]), cond], dim=1)
    [(resnet, blocks, downsample)] = estimator.down_blocks
    x = _transformers(state, blocks, _resnet(state, resnet, x, t_emb))
    skip = x
    x = state.causal_conv(downsample, x)
    for resnet, blocks in estimator.mid_blocks:
        x = _transformers(state, blocks, _resnet(state, resnet, x, t_emb))
    [(resnet, blocks, upsample)] = estimator.up_blocks
    x = _transformers(state, blocks, _resnet(state, resnet, torch.cat([x, skip], dim=1), t_emb))
    x = state.causal_conv(upsample, x)
    x = _causal_block(state, estimator.final_block, x)
    return estimator.final_proj(x)


def _check_supported(estimator: Any) -> None:
    """The walk in `_estimate` mirrors CosyVoice2's one-level decoder; refuse anything else
    rather than decode it wrongly."""
    from cosyvoice.flow.decoder import CausalConditionalDecoder, CausalConv1d

    if not isinstance(estimator, CausalConditionalDecoder):
        raise NotImplementedError(f"incremental decoding needs a CausalConditionalDecoder, not {type(estimator)}")
    if len(estimator.down_blocks) != 1 or len(estimator.up_blocks) != 1:
        # More levels would add strided (down/up-sampling) convolutions, which this walk does not stream.
        raise NotImplementedError("incremental decoding supports a single-level estimator (channels of length 1)")
    if not isinstance(estimator.down_blocks[0][2], CausalConv1d) or not isinstance(estimator.up_blocks[0][2],
                                                                                    CausalConv1d):
        raise NotImplementedError("incremental decoding needs causal convolutions around the mid blocks")
    if any(block.attn2 is not None or not isinstance(block.norm1, torch.nn.LayerNorm)
           for block in _transformer_blocks(estimator)):
        raise NotImplementedError("incremental decoding supports self-attention blocks with plain layer norms")


def _transformer_blocks(estimator: Any) -> list[Any]:
    groups = [estimator.down_blocks[0][1], *(blocks for _, blocks in estimator.mid_blocks), estimator.up_blocks[0][1]]
    return [block for blocks in groups for block in blocks]


def _causal_convs(estimator: Any) -> list[torch.nn.Conv1d]:
    """Every causal convolution, in the order `_estimate` calls them."""
    def resnet_convs(resnet: Any) -> list[torch.nn.Conv1d]:
        return [resnet.block1.block[0], resnet.block2.block[0]]

    convs = [*resnet_convs(estimator.down_blocks[0][0]), estimator.down_blocks[0][2]]
    for resnet, _ in estimator.mid_blocks:
        convs += resnet_convs(resnet)
    convs += [*resnet_convs(estimator.up_blocks[0][0]), estimator.up_blocks[0][2], estimator.final_block.block[0]]
    return convs


def _empty_cache(estimator: Any, device: torch.device, dtype: torch.dtype,
                 prefix: FlowStreamCache | None = None) -> FlowStreamCache:
    """The state before the stream's own first frame: no keys of its own, and the convolutions'
    inputs before it (the prefix's, or zeros: their left padding)."""
    blocks = _transformer_blocks(estimator)
    attn = blocks[0].attn1
    shape = (FLOW_TIMESTEPS, len(blocks), 2, attn.heads, 0, attn.to_k.out_features // attn.heads)
    if prefix is not None:
        tails = prefix.conv_tails  # never written: a chunk replaces the stream's tails with new tensors
    else:
        tails = [torch.zeros(FLOW_TIMESTEPS, 2, conv.in_channels, conv.causal_padding, device=device, dtype=dtype)
                 for conv in _causal_convs(estimator)]
    return FlowStreamCache(frames=prefix.frames if prefix is not None else 0,
                           key_buffer=torch.zeros(shape, device=device, dtype=dtype),
                           value_buffer=torch.zeros(shape, device=device, dtype=dtype), conv_tails=tails, prefix=prefix)


@torch.inference_mode()
def prompt_state(flow: Any, prompt: FlowPrompt, token_mel_ratio: int = 2,
                 before_step: StepHook | None = None) -> FlowStreamCache | None:
    """The decoder state of the prompt's frames that no speech token can change, for every stream
    of this voice to start from (`flow_mel_incremental`'s `prefix`); None when there are none.

    Those are the frames of the prompt's whole attention chunks that end a lookahead or more
    before the prompt's last token: later tokens reach a frame only through the lookahead of the
    tokens in its chunk.
    """
    estimator = flow.decoder.estimator
    _check_supported(estimator)
    chunk = estimator.static_chunk_size
    tokens_per_chunk = chunk // token_mel_ratio
    whole_chunks = (len(prompt.speech_token) - flow.pre_lookahead_len) // tokens_per_chunk
    frames = min(whole_chunks * chunk, len(prompt.speech_feat) // chunk * chunk)
    if frames <= 0:
        return None
    param = next(flow.parameters())
    # Stand-in speech tokens as the prompt's lookahead: they reach no frame kept here.
    encoded = encode_flow_input(flow, FlowRequest([0] * flow.pre_lookahead_len, prompt, 0, streaming=True,
                                                  finalize=False), token_mel_ratio)
    cache = _empty_cache(estimator, param.device, param.dtype)
    _advance(flow, cache, encoded.mu[None, :, :frames], encoded.spks[None], encoded.cond[None, :, :frames],
             before_step)
    return cache


@torch.inference_mode()
def flow_mel_incremental(flow: Any, tokens: list[int], prompt: FlowPrompt, token_offset: int,
                         cache: FlowStreamCache | None, token_mel_ratio: int = 2, finalize: bool = False,
                         prefix: FlowStreamCache | None = None,
                         before_step: StepHook | None = None) -> tuple[np.ndarray, FlowStreamCache]:
    """Mel frames [80, T] for `tokens[token_offset:]` of a streamed chunk, equal to
    `flow_mel(flow, tokens, prompt, token_offset, streaming=True, finalize)`, and the cache for
    the stream's next chunk (after the last chunk, `finalize`, it has no use).

    `cache` is what the previous chunk of this stream returned (it is updated in place); None
    decodes every frame from the start (so a process that has not seen the stream's earlier
    chunks can take it over), or every frame after `prefix`, `prompt_state` of the same prompt.
    `before_step` runs before each Euler step (see `flow_mel_batch`).
    """
    estimator = flow.decoder.estimator
    _check_supported(estimator)
    param = next(flow.parameters())
    device, dtype = param.device, param.dtype
    encoded = encode_flow_input(flow, FlowRequest(tokens, prompt, token_offset, streaming=True, finalize=finalize),
                                token_mel_ratio)
    if cache is None:
        cache = _empty_cache(estimator, device, dtype, prefix)
    start = encoded.first_kept_frame
    if cache.frames > start:
        raise ValueError(f"the cache covers {cache.frames} frames, past this chunk's first frame {start}")
    first = cache.frames
    x = _advance(flow, cache, encoded.mu[None], encoded.spks[None], encoded.cond[None], before_step)
    return x[0, :, start - first:].float().cpu().numpy(), cache


def _advance(flow: Any, cache: FlowStreamCache, mu: torch.Tensor, spks: torch.Tensor,
             cond: torch.Tensor, before_step: StepHook | None) -> torch.Tensor:
    """Decode the frames from `cache.frames` to the end of `mu` ([1, channels, frames], as are
    `cond` and the returned mel), and move `cache` to the last attention chunk boundary."""
    estimator = flow.decoder.estimator
    device, dtype = mu.device, mu.dtype
    total, first, chunk = mu.shape[2], cache.frames, estimator.static_chunk_size
    keep_until = max(first, total // chunk * chunk)
    cache.reserve(total)
    # Chunk-causal attention of the new frames: each sees every frame before the end of its chunk.
    query_pos = torch.arange(first, total, device=device)
    attn_mask = torch.arange(total, device=device)[None, :] < (query_pos[:, None] // chunk + 1) * chunk

    # Classifier-free guidance: batch row 0 is conditional, row 1 has mu, speaker and prompt zeroed.
    mu_in = torch.cat([mu[:, :, first:], torch.zeros_like(mu[:, :, first:])])
    spks_in = torch.cat([spks, torch.zeros_like(spks)])
    cond_in = torch.cat([cond[:, :, first:], torch.zeros_like(cond[:, :, first:])])
    x = flow.decoder.rand_noise[:, :, first:total].to(device).to(dtype)
    # The Euler schedule exactly as upstream's solver steps it (same dtype, same accumulation).
    t_span = euler_time_span(flow.decoder, device, dtype)
    t, dt = t_span[0].unsqueeze(0), t_span[1] - t_span[0]
    cfg_rate = flow.decoder.inference_cfg_rate
    # Per Euler step, its passes (both CFG rows, or each guidance branch), whose convolutions' new
    # tails are the cache's next ones.
    steps: list[list[_StepState]] = []
    for step in range(1, FLOW_TIMESTEPS + 1):
        if before_step is not None:
            before_step()
        split = guidance_branches_apart_pays(device)  # per step: the thread count may have changed
        branches = (slice(0, 1), slice(1, 2)) if split else (slice(None),)
        states = [_StepState(first, keep_until, attn_mask, cache, step - 1, rows) for rows in branches]
        if split:
            dphi_cond, dphi_uncond = guidance_branches_apart(
                lambda state, *inputs: _estimate(state, estimator, *inputs),
                [(state, x, mu_in[rows], t, spks_in[rows], cond_in[rows]) for state, rows in zip(states, branches,
                                                                                                strict=True)])
        else:
            dphi_cond, dphi_uncond = _estimate(states[0], estimator, torch.cat([x, x]), mu_in, t.expand(2), spks_in,
                                               cond_in).split(1)
        steps.append(states)
        x = x + dt * ((1.0 + cfg_rate) * dphi_cond - cfg_rate * dphi_uncond)
        t = t + dt
        if step < FLOW_TIMESTEPS:
            dt = t_span[step + 1] - t

    cache.frames = keep_until
    cache.conv_tails = [torch.stack([torch.cat([state.new_tails[conv] for state in states]) for states in steps])
                        for conv in range(len(cache.conv_tails))]
    return x
