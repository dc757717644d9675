"""Speech tokens -> mel with the flow-matching decoder, as stateless functions.

Upstream `CosyVoice2Model.token2wav`'s flow half, with the stream's `token_offset` passed in
instead of kept on a shared model object, and many requests' decoder passes batched.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tts_core.wire import FlowPrompt

#: Euler steps of the flow-matching decoder, as upstream's `CausalMaskedDiffWithXvec.inference` takes.
FLOW_TIMESTEPS = 10

#: Called before each Euler step of a decode; the caller may change torch's thread count there.
StepHook = Callable[[], object]


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
def flow_mel_batch(flow: Any, requests: list[FlowRequest], token_mel_ratio: int = 2,
                   before_step: StepHook | None = None) -> list[np.ndarray]:
    """`flow_mel` for many requests, their flow-matching decoder passes batched.

    Upstream's `CausalMaskedDiffWithXvec.inference` and Euler solver take one utterance. Here each
    request is encoded alone (about 2% of the flow's work), then the decoder's ten classifier-free
    guided estimator passes run on all requests at once, right-padded to a common length. The
    estimator's convolutions are causal and padded keys are masked out of attention, so padding
    never reaches a real frame: each request gets the mel it would get alone. `before_step` runs
    before each Euler step: a caller that shares the node's cores resizes torch's threads there.
    """
    mels: list[np.ndarray | None] = [None] * len(requests)
    for streaming in (False, True):  # the two attention masks cannot share one estimator pass
        members = [index for index, request in enumerate(requests) if request.streaming == streaming]
        encoded = {index: encode_flow_input(flow, requests[index], token_mel_ratio) for index in members}
        for group in padding_groups([encoded[index].mu.shape[1] for index in members]):
            indices = [members[position] for position in group]
            decoded = _decode(flow, [encoded[index] for index in indices], streaming, before_step)
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


def _decode(flow: Any, inputs: list[EncodedFlowInput], streaming: bool,
            before_step: StepHook | None) -> list[np.ndarray]:
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
    estimator = partial(cfm.estimator, streaming=streaming)
    for step in range(1, len(t_span)):
        if before_step is not None:
            before_step()
        if guidance_branches_apart_pays(device):
            conditioned, unconditioned = guidance_branches_apart(
                estimator, [(x, mask[rows], mu[rows], t.expand(batch), spks[rows], cond[rows])
                            for rows in (slice(0, batch), slice(batch, 2 * batch))])
        else:
            velocity = estimator(torch.concat([x, x]), mask, mu, t.expand(2 * batch), spks, cond)
            conditioned, unconditioned = velocity.split(batch)
        x = x + dt * ((1.0 + cfm.inference_cfg_rate) * conditioned - cfm.inference_cfg_rate * unconditioned)
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
    mel = x.float().cpu()
    return [mel[row, :, item.first_kept_frame: item.mu.shape[1]].numpy()
            for row, item in enumerate(inputs)]


#: The two guidance branches' threads (started on first use).
_BRANCH_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="guidance")


def guidance_branches_apart_pays(device: torch.device) -> bool:
    """Whether `guidance_branches_apart` is the faster way here: on a CPU with two threads or more."""
    return device.type == "cpu" and torch.get_num_threads() >= 2


def guidance_branches_apart(branch: Callable[..., torch.Tensor],
                            arguments: list[tuple[Any, ...]]) -> list[torch.Tensor]:
    """`branch(*arguments[0])` (the conditioned rows) and `branch(*arguments[1])` (the
    unconditioned ones) at once, each on its own thread with half of the caller's cores, instead of
    one pass over both on all of them.

    One pass on all cores meets a barrier at the end of every operator (thousands per Euler step):
    a core that the rest of the node takes for a moment (on a two-core machine, Ray's own processes
    take about a third of one) stalls every barrier, and small operators scale poorly anyway. Two
    passes side by side share nothing until the step ends, so such a moment delays one branch by
    itself. Each row's result is the one the joint pass gives, within float rounding.
    """
    caller_threads = torch.get_num_threads()
    threads = max(1, caller_threads // 2)

    def run(branch_arguments: tuple[Any, ...]) -> torch.Tensor:
        # Inference mode is per thread, and so is OpenMP's thread count, but MKL's is the process's:
        # set on every call, and given back to the caller below.
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return branch(*branch_arguments)

    try:
        return list(_BRANCH_POOL.map(run, arguments))
    finally:
        torch.set_num_threads(caller_threads)


def euler_time_span(cfm: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The CFM's Euler time points, as upstream's `CausalConditionalCFM.forward` builds them."""
    t_span = torch.linspace(0, 1, FLOW_TIMESTEPS + 1, device=device, dtype=dtype)
    if cfm.t_scheduler == "cosine":
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    return t_span
