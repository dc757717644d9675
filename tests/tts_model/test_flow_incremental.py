"""Incremental streamed flow decoding gives the mel of upstream's full recompute, chunk by chunk."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tts_core.wire import FlowPrompt
from tts_model.chunk_schedule import StreamPlanner
from tts_model.flow_decode import flow_mel
from tts_model.flow_incremental import FlowStreamCache, flow_mel_incremental, prompt_state
from tts_model.frontend import voice_from_spk2info

CHUNKS = 5
TOLERANCE = 1e-4


def voice_prompt(tiny_model) -> FlowPrompt:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    return FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding)


def empty_prompt(tiny_model) -> FlowPrompt:
    embedding = voice_prompt(tiny_model).embedding
    return FlowPrompt(np.zeros(0, np.int32), np.zeros((0, 80), np.float32), embedding)


def stream_tokens(chunks: int = CHUNKS, seed: int = 7) -> list[int]:
    return np.random.default_rng(seed).integers(0, 6561, 25 * (chunks + 3)).tolist()


def compare_stream(tiny_model, prompt: FlowPrompt, restart_at: int | None = None, seed: int = 7,
                   prefix: FlowStreamCache | None = None) -> tuple[list[int], FlowStreamCache]:
    """Decode CHUNKS streamed chunks both ways on upstream's schedule; at `restart_at` the
    incremental path starts without a cache, as a replica new to the stream would; `prefix`:
    the voice's shared state it starts from. Returns the frames the cache covered after each
    chunk, and the final cache."""
    tokens = stream_tokens(seed=seed)
    planner = StreamPlanner(len(prompt.speech_token), stream=True)
    cache, frames = None, []
    for index in range(CHUNKS):
        plan = planner.next_chunk(len(tokens), llm_finished=False)
        assert plan is not None and plan.streaming and not plan.finalize
        expected = flow_mel(tiny_model.flow, tokens[:plan.end], prompt, plan.token_offset, streaming=True,
                            finalize=False, token_mel_ratio=tiny_model.token_mel_ratio)
        if index == restart_at:
            cache = None
        mel, cache = flow_mel_incremental(tiny_model.flow, tokens[:plan.end], prompt, plan.token_offset, cache,
                                          token_mel_ratio=tiny_model.token_mel_ratio, prefix=prefix)
        assert mel.shape == expected.shape == (80, 25 * tiny_model.token_mel_ratio)
        assert np.abs(mel - expected).max() < TOLERANCE, f"chunk {index}"
        frames.append(cache.frames)
    return frames, cache


@pytest.fixture(params=[1, 2], ids=["one_pass", "guidance_branches_apart"])
def torch_threads(request):
    """With two threads or more, the conditioned and unconditioned rows run side by side."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("prompt_of", [voice_prompt, empty_prompt], ids=["voice_prompt", "empty_prompt"])
def test_every_chunk_matches_full_recompute(tiny_model, prompt_of, torch_threads) -> None:
    prompt = prompt_of(tiny_model)
    frames, cache = compare_stream(tiny_model, prompt)
    param = next(tiny_model.flow.parameters())
    prompt_frames = len(prompt.speech_feat)
    for index, covered in enumerate(frames):
        # The cache ends where the chunk just decoded ends: on an attention chunk boundary.
        assert covered == prompt_frames + 2 * (25 * (index + 1) + (-len(prompt.speech_token)) % 25)
    assert cache.keys.dtype == param.dtype and cache.keys.device == param.device
    assert cache.keys.shape[4] == cache.frames == frames[-1]
    # Per frame: a key and a value per Euler step, CFG branch and transformer block.
    estimator = tiny_model.flow.decoder.estimator
    blocks = [block for module in estimator.modules() for block in [module] if hasattr(block, "attn1")]
    per_frame = 2 * 10 * 2 * len(blocks) * blocks[0].attn1.to_k.out_features * param.element_size()
    covered_bytes = (cache.keys.numel() + cache.values.numel()) * param.element_size()
    assert covered_bytes == per_frame * cache.frames <= cache.nbytes


def test_a_replica_without_the_cache_takes_over_mid_stream(tiny_model) -> None:
    """Chunk 3 is decoded from scratch (prefill) and its cache serves chunk 4 as if nothing happened."""
    prompt = voice_prompt(tiny_model)
    frames, _ = compare_stream(tiny_model, prompt, restart_at=3)
    assert frames[3] == frames[2] + 50


def long_prompt(tiny_model, tokens: int = 75) -> FlowPrompt:
    """A 3 s prompt (75 tokens, 150 mel frames), as the benchmark's zero-shot workload uploads."""
    voice = voice_prompt(tiny_model)
    rng = np.random.default_rng(3)
    return FlowPrompt(rng.integers(0, 6561, tokens).astype(np.int32),
                      rng.standard_normal((2 * tokens, 80)).astype(np.float32), voice.embedding)


def test_streams_of_one_voice_start_from_its_shared_prompt_state(tiny_model, torch_threads) -> None:
    """The prompt's whole attention chunks that end a lookahead before the prompt does (75 - 3
    tokens: 2 chunks, 100 frames) are decoded once; streams of other tokens start from them,
    restarted ones too, and every chunk still matches the full recompute."""
    prompt = long_prompt(tiny_model)
    shared = prompt_state(tiny_model.flow, prompt, tiny_model.token_mel_ratio)
    assert shared is not None and shared.frames == 100
    before = [tensor.clone() for tensor in (shared.keys, shared.values, *shared.conv_tails)]
    for seed, restart_at in ((7, None), (8, 2)):
        frames, cache = compare_stream(tiny_model, prompt, restart_at, seed=seed, prefix=shared)
        assert cache.base == 100 and cache.keys.shape[4] == cache.frames - 100
    # Streams read the shared state and never write it.
    assert all(torch.equal(a, b) for a, b in zip(before, (shared.keys, shared.values, *shared.conv_tails),
                                                 strict=True))


def test_a_prompt_too_short_for_a_whole_chunk_has_no_shared_state(tiny_model) -> None:
    assert prompt_state(tiny_model.flow, long_prompt(tiny_model, tokens=27), tiny_model.token_mel_ratio) is None
    assert prompt_state(tiny_model.flow, long_prompt(tiny_model, tokens=28), tiny_model.token_mel_ratio).frames == 50


def test_chunks_off_the_attention_grid(tiny_model) -> None:
    """A schedule whose chunk ends fall inside attention chunks still matches: frames of an
    unfinished attention chunk are never cached, so they are decoded again next time."""
    prompt = empty_prompt(tiny_model)
    tokens = stream_tokens()
    cache, offset = None, 0
    for end in (33, 48, 63, 103):
        expected = flow_mel(tiny_model.flow, tokens[:end], prompt, offset, streaming=True, finalize=False)
        mel, cache = flow_mel_incremental(tiny_model.flow, tokens[:end], prompt, offset, cache)
        assert np.abs(mel - expected).max() < TOLERANCE
        assert cache.frames % tiny_model.flow.decoder.estimator.static_chunk_size == 0
        offset = end - tiny_model.flow.pre_lookahead_len


def test_a_cache_past_the_chunk_is_refused(tiny_model) -> None:
    prompt = empty_prompt(tiny_model)
    tokens = stream_tokens()
    _, cache = flow_mel_incremental(tiny_model.flow, tokens[:78], prompt, 0, None)
    with pytest.raises(ValueError, match="past this chunk"):
        flow_mel_incremental(tiny_model.flow, tokens[:53], prompt, 25, cache)


def test_cache_keeps_the_model_dtype(tiny_model) -> None:
    """In bf16 the cache is bf16 too, and the chunks still follow the bf16 full recompute."""
    flow = copy.deepcopy(tiny_model.flow).to(torch.bfloat16)  # a copy: the session's model stays fp32
    prompt = voice_prompt(tiny_model)
    tokens = stream_tokens()
    planner = StreamPlanner(len(prompt.speech_token), stream=True)
    cache = None
    for _ in range(3):
        plan = planner.next_chunk(len(tokens), llm_finished=False)
        expected = flow_mel(flow, tokens[:plan.end], prompt, plan.token_offset, streaming=True, finalize=False)
        mel, cache = flow_mel_incremental(flow, tokens[:plan.end], prompt, plan.token_offset, cache)
        assert cache.keys.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in cache.conv_tails)
        # bf16 rounding differs between shapes of the same product; a loose bound still catches a wrong chunk.
        assert np.abs(mel - expected).max() < 0.1 * np.abs(expected).max()


def decode_stream(tiny_model, prompt: FlowPrompt, tokens: list[int], incremental_final: bool) -> list[np.ndarray]:
    """Every chunk of a finished stream on upstream's schedule, its streamed chunks decoded
    incrementally; the final one in full with full attention (upstream's, the default) or
    incrementally like the others."""
    planner = StreamPlanner(len(prompt.speech_token), stream=True)
    cache, mels = None, []
    while (plan := planner.next_chunk(len(tokens), llm_finished=True)) is not None:
        if plan.finalize and not incremental_final:
            mels.append(flow_mel(tiny_model.flow, tokens, prompt, plan.token_offset, streaming=False, finalize=True,
                                 token_mel_ratio=tiny_model.token_mel_ratio))
            continue
        mel, cache = flow_mel_incremental(tiny_model.flow, tokens[:plan.end], prompt, plan.token_offset, cache,
                                          token_mel_ratio=tiny_model.token_mel_ratio, finalize=plan.finalize)
        mels.append(mel)
    return mels


@pytest.mark.parametrize("prompt_of", [voice_prompt, empty_prompt], ids=["voice_prompt", "empty_prompt"])
def test_final_chunk_decoded_incrementally(tiny_model, prompt_of, torch_threads) -> None:
    """Both ways of decoding a stream's last chunk give every token its mel frames; the incremental
    one equals the chunk-causal full recompute, and the chunks before it are the same either way."""
    prompt = prompt_of(tiny_model)
    tokens = stream_tokens()[:25 * 3 + 11]  # the last chunk shorter than a hop
    full, incremental = (decode_stream(tiny_model, prompt, tokens, incremental_final) for incremental_final in
                         (False, True))
    ratio = tiny_model.token_mel_ratio
    assert sum(mel.shape[1] for mel in full) == sum(mel.shape[1] for mel in incremental) == ratio * len(tokens)
    assert [mel.shape for mel in full] == [mel.shape for mel in incremental]
    assert all(np.array_equal(a, b) for a, b in zip(full[:-1], incremental[:-1], strict=True))
    offset = len(tokens) - full[-1].shape[1] // ratio
    expected = flow_mel(tiny_model.flow, tokens, prompt, offset, streaming=True, finalize=True,
                        token_mel_ratio=ratio)
    assert np.abs(incremental[-1] - expected).max() < TOLERANCE
    assert not np.allclose(incremental[-1], full[-1], atol=TOLERANCE)  # full attention sees the frames after
