"""Cross-request batching: the LLM, flow decoder and vocoder give each request, batched, what it
gets alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tts_core.wire import FlowPrompt, SpeechTokenRequest
from tts_model.flow_decode import FlowRequest, flow_mel_batch, padding_groups
from tts_model.frontend import TextFrontend, voice_from_spk2info
from tts_model.llm_decode import SpeechTokenDecoder
from tts_model.vocode import SOURCE_CACHE_LEN, VocodeRequest, vocode, vocode_batch

TEXTS = ["Hello, how are you today?", "This is a much longer sentence that the model will need to speak aloud.",
         "Short one.", "Another sentence of medium length here, please."]


def requests(tiny_model) -> list[SpeechTokenRequest]:
    frontend = TextFrontend(tiny_model.tokenizer)
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    prompts = [([], []), (voice.prompt_text_token.tolist(), voice.speech_token.tolist())]
    return [SpeechTokenRequest(text_token=frontend.tokenize(text), prompt_text_token=prompts[index % 2][0],
                               prompt_speech_token=prompts[index % 2][1], seed=index)
            for index, text in enumerate(TEXTS * 2)]


def test_batched_decoding_equals_one_sequence_at_a_time(tiny_model) -> None:
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    alone = []
    for request in requests(tiny_model):
        state = decoder.start(request)
        while not state.finished:
            decoder.step(state)
        alone.append(state.out_tokens)

    # Sequences join at different steps and leave when they finish, as under live traffic.
    pending = [decoder.start(request) for request in requests(tiny_model)]
    active, together = [], []
    step = 0
    while pending or active:
        if pending and step % 3 == 0:
            active.append(pending.pop(0))
            together.append(active[-1])
        decoder.step_batch(active)
        active = [state for state in active if not state.finished]
        step += 1
    assert [state.out_tokens for state in together] == alone
    assert sum(map(len, alone)) > 100


def flow_prompts(tiny_model) -> list[FlowPrompt]:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    return [FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding),
            FlowPrompt(np.zeros(0, np.int32), np.zeros((0, 80), np.float32), voice.embedding)]


def upstream_flow(flow, request: FlowRequest) -> np.ndarray:
    """Upstream `CausalMaskedDiffWithXvec.inference` for one request, sliced as `token2wav` does."""
    prompt = request.prompt
    token = torch.tensor([request.tokens], dtype=torch.int32)
    prompt_token = torch.from_numpy(prompt.speech_token.astype(np.int32)).reshape(1, -1)
    prompt_feat = torch.from_numpy(prompt.speech_feat.astype(np.float32)).reshape(1, -1, 80)
    mel, _ = flow.inference(token=token, token_len=torch.tensor([token.shape[1]], dtype=torch.int32),
                            prompt_token=prompt_token,
                            prompt_token_len=torch.tensor([prompt_token.shape[1]], dtype=torch.int32),
                            prompt_feat=prompt_feat, prompt_feat_len=torch.tensor([prompt_feat.shape[1]]),
                            embedding=torch.from_numpy(prompt.embedding).reshape(1, -1),
                            streaming=request.streaming, finalize=request.finalize)
    return mel[0, :, request.token_offset * 2:].numpy()


@pytest.mark.parametrize("threads", [1, 2], ids=["one_pass", "guidance_branches_apart"])
def test_batched_flow_equals_upstream_one_request_at_a_time(tiny_model, threads) -> None:
    """With two threads or more, the conditioned and unconditioned rows run side by side."""
    rng = np.random.default_rng(0)
    voiced, bare = flow_prompts(tiny_model)
    # Whole utterances and streamed chunks of several lengths, with and without a prompt voice.
    shapes = [(40, voiced, 0, False, True), (53, bare, 0, True, False), (90, voiced, 25, True, False),
              (70, bare, 0, False, True), (120, voiced, 60, False, True), (44, voiced, 0, False, True),
              (78, voiced, 50, True, False)]
    requests = [FlowRequest(rng.integers(0, 6561, n).tolist(), prompt, offset, streaming, finalize)
                for n, prompt, offset, streaming, finalize in shapes]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batched = flow_mel_batch(tiny_model.flow, requests)
    finally:
        torch.set_num_threads(before)
    for request, mel in zip(requests, batched, strict=True):
        expected = upstream_flow(tiny_model.flow, request)
        assert mel.shape == expected.shape
        assert np.max(np.abs(mel - expected)) <= 1e-4


def test_batched_vocoder_equals_one_request_at_a_time(tiny_model) -> None:
    rng = np.random.default_rng(1)
    mels = [rng.normal(-5, 2, (80, frames)).astype(np.float32) for frames in (50, 50, 50, 73, 30)]
    # Two streams of equal-length chunks (stacked together), a stretched one and two whole ones.
    first = [VocodeRequest(mels[0], None, False, 1.0, 5), VocodeRequest(mels[1], None, False, 1.0, 6),
             VocodeRequest(mels[3], None, True, 1.3, 7), VocodeRequest(mels[4], None, True, 1.0, 8)]
    alone = [vocode(tiny_model.hift, r.mel, r.cache, r.finalize, r.speed, r.seed) for r in first]
    together = vocode_batch(tiny_model.hift, first)
    second = [VocodeRequest(mels[2], alone[0][1], True, 1.0, 9), VocodeRequest(mels[2], alone[1][1], False, 1.0, 10)]
    alone += [vocode(tiny_model.hift, r.mel, r.cache, r.finalize, r.speed, r.seed) for r in second]
    together += vocode_batch(tiny_model.hift, second)
    for (pcm, cache), (expected, expected_cache) in zip(together, alone, strict=True):
        assert pcm.shape == expected.shape and np.max(np.abs(pcm - expected)) <= 1e-4
        assert (cache is None) == (expected_cache is None)
        if cache is not None:
            assert np.max(np.abs(cache.speech - expected_cache.speech)) <= 1e-4
    # The streamed chunks hold back the cross-fade tail; seeds still tell the streams apart.
    assert len(together[0][0]) == 50 * 480 - SOURCE_CACHE_LEN
    assert not np.allclose(together[0][0], together[1][0])


def test_vocoder_equals_upstream_hift(tiny_model) -> None:
    mel = np.random.default_rng(2).normal(-5, 2, (80, 64)).astype(np.float32)
    [(pcm, _)] = vocode_batch(tiny_model.hift, [VocodeRequest(mel, None, True, 1.0, 3)])
    torch.manual_seed(3)
    expected, _ = tiny_model.hift.inference(speech_feat=torch.from_numpy(mel).unsqueeze(0))
    assert np.max(np.abs(pcm - expected[0].numpy())) <= 1e-4


@pytest.mark.parametrize(("lengths", "groups"), [
    ([], []),
    ([100], [[0]]),
    ([100, 104, 98], [[2, 0, 1]]),
    ([60, 1000, 62, 990], [[0, 2], [3, 1]]),
    ([10, 20, 40, 80], [[0], [1], [2], [3]]),
])
def test_padding_groups_keep_padding_small(lengths, groups) -> None:
    assert padding_groups(lengths) == groups


def decode_alone(decoder: SpeechTokenDecoder, request: SpeechTokenRequest) -> list[int]:
    state = decoder.start(request)
    while not state.finished:
        decoder.step(state)
    return state.out_tokens


class InjectedFault(RuntimeError):
    pass


@pytest.mark.parametrize("fault", ["sampling", "forward"])
def test_a_failing_sequence_leaves_the_batch_alone(tiny_model, fault) -> None:
    """One of several concurrent sequences fails mid-way (in its sampling, or in a batched forward
    that fails part-way through the layers): it alone fails; the others, and a sequence that
    joins later, get exactly what they get alone."""
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    batch = requests(tiny_model)[:5]
    alone = [decode_alone(decoder, request) for request in batch]
    victim_index, fail_at = 1, 6

    states = [decoder.start(request) for request in batch[:4]]
    victim = states[victim_index]
    marker = 1e4  # the victim's input after `fail_at` steps carries it, so the forward can tell

    if fault == "sampling":
        sample = decoder.sample

        def faulty_sample(logp, state, ignore_eos, **options):
            if state is victim and state.step == fail_at:
                raise InjectedFault("injected sampling failure")
            return sample(logp, state, ignore_eos, **options)

        decoder.sample = faulty_sample
    else:
        layers = tiny_model.llm.llm.model.model.layers
        seen = {"victim": False}

        def spot_victim(module, args, kwargs):
            seen["victim"] = bool((kwargs["inputs_embeds"][:, -1, 0] == marker).any())

        def fail_in_layer_two(module, args):
            if seen["victim"]:
                raise InjectedFault("injected forward failure")

        hooks = [tiny_model.llm.llm.model.model.register_forward_pre_hook(spot_victim, with_kwargs=True),
                 layers[1].register_forward_pre_hook(fail_in_layer_two)]
    try:
        active, late, step = list(states), None, 0
        while active:
            if fault == "forward" and victim.step == fail_at and not victim.finished:
                victim.lm_input = victim.lm_input.clone()
                victim.lm_input[:, -1, 0] = marker
            decoder.step_batch(active)
            step += 1
            if late is None and victim.finished:
                late = decoder.start(batch[4])
                active.append(late)
            active = [state for state in active if not state.finished]
    finally:
        if fault == "sampling":
            del decoder.sample
        else:
            for hook in hooks:
                hook.remove()

    assert isinstance(victim.error, InjectedFault)
    assert victim.out_tokens == alone[victim_index][:fail_at]
    others = [index for index in range(4) if index != victim_index]
    assert all(states[index].error is None for index in others)
    assert [states[index].out_tokens for index in others] == [alone[index] for index in others]
    assert late is not None and late.error is None and late.out_tokens == alone[4]
    assert decode_alone(decoder, batch[0]) == alone[0]
