"""Continuous batching in the LLM: sequences decoded together yield what each yields alone."""

from __future__ import annotations

from tts_model.frontend import TextFrontend, VoiceFeatures
from tts_model.llm_decode import SpeechTokenDecoder, SpeechTokenRequest

TEXTS = ["Hello, how are you today?", "This is a much longer sentence that the model will need to speak aloud.",
         "Short one.", "Another sentence of medium length here, please."]


def requests(tiny_model) -> list[SpeechTokenRequest]:
    frontend = TextFrontend(tiny_model.tokenizer)
    voice = VoiceFeatures.from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
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
