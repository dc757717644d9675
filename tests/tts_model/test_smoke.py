"""End to end through the library modules: text -> speech tokens -> mel -> 24 kHz waveform."""

from __future__ import annotations

import numpy as np
import torch

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

        def as_input(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor([ids], dtype=torch.int32), torch.tensor([len(ids)], dtype=torch.int32)

        torch.manual_seed(seed)
        (text_t, text_len), (prompt_t, prompt_len), (speech_t, speech_len) = map(as_input, (text, prompt_text,
                                                                                         prompt_speech))
        expected = list(tiny_model.llm.inference(text=text_t, text_len=text_len, prompt_text=prompt_t,
                                                 prompt_text_len=prompt_len, prompt_speech_token=speech_t,
                                                 prompt_speech_token_len=speech_len, embedding=torch.zeros(0, 192)))
        assert state.out_tokens == expected
