"""End to end through the library modules: text -> speech tokens -> mel -> 24 kHz waveform."""

from __future__ import annotations

import copy

import numpy as np
import torch

from tests.reference import upstream_llm_tokens
from tts_core.wire import FlowPrompt, SpeechTokenRequest
from tts_model.flow_decode import flow_mel
from tts_model.frontend import TextFrontend, voice_from_spk2info
from tts_model.llm_decode import SpeechTokenDecoder
from tts_model.vocode import vocode


def test_text_to_waveform(tiny_model) -> None:
    frontend = TextFrontend(tiny_model.tokenizer)
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    [segment] = frontend.normalize("Hello, how are you today?")
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    state = decoder.start(SpeechTokenRequest(text_token=frontend.tokenize(segment), seed=1))
    while not state.finished:
        decoder.step(state)
    tokens = state.out_tokens
    assert 2 * len(frontend.tokenize(segment)) <= len(tokens) < 20 * len(frontend.tokenize(segment))
    assert all(0 <= token < 6561 for token in tokens)

    prompt = FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding)
    mel = flow_mel(tiny_model.flow, tokens, prompt, token_offset=0, streaming=False, finalize=True)
    assert mel.shape == (80, 2 * len(tokens))
    waveform, cache = vocode(tiny_model.hift, mel, None, finalize=True)
    assert cache is None
    assert waveform.shape == (2 * len(tokens) * 480,)  # 25 tokens/s -> 24000 samples/s
    assert np.isfinite(waveform).all() and 0 < np.abs(waveform).max() <= 1.0


def test_decoder_matches_upstream_inference(tiny_model) -> None:
    """Same inputs and seed: the step decoder yields exactly `Qwen2LM.inference`'s tokens."""
    frontend = TextFrontend(tiny_model.tokenizer)
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    text = frontend.tokenize("Hello! This is a test of voice cloning.")
    prompt_text, prompt_speech = voice.prompt_text_token.tolist(), voice.speech_token.tolist()
    decoder = SpeechTokenDecoder(tiny_model.llm, tiny_model.sampling_params)
    for seed in (0, 7):
        state = decoder.start(SpeechTokenRequest(text_token=text, prompt_text_token=prompt_text,
                                                 prompt_speech_token=prompt_speech, seed=seed))
        while not state.finished:
            decoder.step(state)

        expected = upstream_llm_tokens(tiny_model.llm, *(torch.tensor([ids], dtype=torch.int32)
                                                         for ids in (text, prompt_text, prompt_speech)), seed)
        assert state.out_tokens == expected


def test_a_model_that_keeps_choosing_end_of_speech_speaks_the_minimum_length(tiny_model) -> None:
    """End-of-speech is masked until the minimum length, as current upstream does: such a model
    speaks exactly that many tokens (the installed snapshot resampled 100 times, then raised)."""
    llm = copy.deepcopy(tiny_model.llm)
    with torch.no_grad():
        llm.llm_decoder.bias[6561] = 100.0
        llm.llm_decoder.bias[6562:6564] = -100.0
    text = TextFrontend(tiny_model.tokenizer).tokenize("Hello! This is a test of voice cloning.")
    decoder = SpeechTokenDecoder(llm, tiny_model.sampling_params)
    state = decoder.start(SpeechTokenRequest(text_token=text, seed=3))
    while not state.finished:
        decoder.step(state)
    assert state.error is None
    assert len(state.out_tokens) == state.min_len == 2 * len(text)
    assert state.out_tokens == upstream_llm_tokens(llm, torch.tensor([text], dtype=torch.int32),
                                                   torch.zeros(1, 0, dtype=torch.int32),
                                                   torch.zeros(1, 0, dtype=torch.int32), 3)
