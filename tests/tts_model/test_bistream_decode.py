"""Text streamed into the LLM: `SpeechTokenDecoder`'s bistream sequences sample exactly the tokens of
upstream's `Qwen2LM.inference_bistream`, however the text arrives and whatever they are batched with."""

from __future__ import annotations

import random

import pytest
import torch

from tests.reference import finishing_seed, upstream_bistream_tokens
from tts_core.wire import BistreamRequest, SpeechTokenRequest
from tts_model.frontend import TextFrontend, voice_from_spk2info
from tts_model.llm_decode import BistreamState, SpeechTokenDecoder

TEXT = ("Hello there, this is a test of speaking while the text is still being written by somebody who types "
        "rather slowly, one word after another, until the very end.")
KINDS = ["sft", "zero_shot", "instruct"]
INSTRUCTION = "Please speak in a happy and energetic tone<|endofprompt|>"


def prompts(tiny_model, kind: str) -> tuple[list[int], list[int]]:
    """(LLM prompt text tokens, LLM prompt speech tokens) of sft, zero-shot and instruct."""
    if kind == "sft":
        return [], []
    if kind == "instruct":
        return TextFrontend(tiny_model.tokenizer).tokenize(INSTRUCTION), []
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    return voice.prompt_text_token.tolist(), voice.speech_token.tolist()


def decode(decoder: SpeechTokenDecoder, state: BistreamState, text: list[int], arrival: list[int]) -> list[int]:
    """Decode `state`, handing it `arrival[i]` more text tokens before step i (all the rest at the end)."""
    tokens, fed, step = [], 0, 0
    while not state.finished:
        if fed < len(text):
            count = arrival[step] if step < len(arrival) else len(text) - fed
            decoder.feed(state, text[fed:fed + count], text_end=fed + count >= len(text))
            fed += count
        step += 1
        if decoder.ready(state):
            if (token := decoder.step(state)) is not None:
                tokens.append(token)
        else:
            assert fed < len(text) or state.finished, "a sequence with all its text never waits"
    return tokens


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_equal_upstream_bistream_however_the_text_arrives(kind, tiny_model) -> None:
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    text = TextFrontend(tiny_model.tokenizer).tokenize(TEXT)
    prompt_text, prompt_speech = prompts(tiny_model, kind)
    seed, expected = finishing_seed(lambda seed: upstream_bistream_tokens(tiny_model, text, prompt_text,
                                                                          prompt_speech, seed))
    assert len(expected) > len(text)

    rng = random.Random(0)
    arrivals = {"all at once": [len(text)], "one token per step": [1] * len(text),
                "slowly, in bursts": [rng.choice([0, 0, 0, 1, 2, 4]) for _ in range(40 * len(text))]}
    for name, arrival in arrivals.items():
        state = decoder.start_bistream(BistreamRequest(key=name, prompt_text_token=prompt_text,
                                                       prompt_speech_token=prompt_speech, seed=seed))
        assert decode(decoder, state, text, arrival) == expected, name
        assert decoder.text_fed(state) == len(text)


def test_bistream_and_ordinary_sequences_share_batched_steps(tiny_model) -> None:
    """Bistream sequences wait for text, take text blocks alone and rejoin the packed batch; every
    sequence still gets the tokens it gets alone."""
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    text = TextFrontend(tiny_model.tokenizer).tokenize(TEXT)
    streamed, expected = [], []
    for kind in KINDS:
        seed, tokens = finishing_seed(lambda seed, kind=kind: upstream_bistream_tokens(
            tiny_model, text, *prompts(tiny_model, kind), seed))
        streamed.append((text, *prompts(tiny_model, kind), seed))
        expected.append(tokens)
    ordinary = [SpeechTokenRequest(text_token=text[:12 + 9 * index], seed=index) for index in range(2)]
    ordinary_alone = []
    for request in ordinary:
        state = decoder.start(request)
        while not state.finished:
            decoder.step(state)
        ordinary_alone.append(state.out_tokens)

    bistream = [decoder.start_bistream(BistreamRequest(key=str(index), prompt_text_token=prompt_text,
                                                       prompt_speech_token=prompt_speech, seed=seed))
                for index, (_, prompt_text, prompt_speech, seed) in enumerate(streamed)]
    states = bistream + [decoder.start(request) for request in ordinary]
    produced: dict[int, list[int]] = {index: [] for index in range(len(bistream))}
    index_of = {id(state): index for index, state in enumerate(bistream)}
    fed = [0] * len(bistream)
    step = 0
    while not all(state.finished for state in states):
        for index, (text, *_) in enumerate(streamed):  # one text token every (index + 2) steps
            if step % (index + 2) == 0 and fed[index] < len(text):
                decoder.feed(bistream[index], [text[fed[index]]], text_end=fed[index] + 1 == len(text))
                fed[index] += 1
        ready = [state for state in states if decoder.ready(state)]
        for state, token in zip(ready, decoder.step_batch(ready), strict=True):
            if token is not None and isinstance(state, BistreamState):
                produced[index_of[id(state)]].append(token)
        step += 1
    assert [produced[index] for index in range(len(bistream))] == expected
    assert [state.out_tokens for state in states[len(bistream):]] == ordinary_alone


def test_a_sequence_whose_text_ends_empty_speaks_nothing(tiny_model) -> None:
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    state = decoder.start_bistream(BistreamRequest(key="empty"))
    assert not decoder.ready(state) and not state.finished
    decoder.feed(state, [], text_end=True)
    assert not decoder.ready(state) and state.finished
    with pytest.raises(ValueError):
        decoder.feed(state, [11], text_end=False)


def test_the_twin_asks_for_text_at_a_speech_like_pace(tiny_model) -> None:
    """The random twin samples fill tokens, so a bistream sequence waits for text instead of running on."""
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    text = TextFrontend(tiny_model.tokenizer).tokenize(TEXT)
    state = decoder.start_bistream(BistreamRequest(key="pace", seed=3))
    decoder.feed(state, text[:5])
    with torch.inference_mode():
        while decoder.ready(state):
            decoder.step(state)
    assert not state.finished and 0 < state.speech_tokens <= 100
    assert state.out_tokens[-1] == decoder.fill
