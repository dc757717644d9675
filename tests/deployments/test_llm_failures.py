"""The LLM replica's decoding loop, in process (no Ray cluster): a request whose sequence fails gets
its error, while the requests decoded in the same batches, and the ones after it, get their tokens."""

from __future__ import annotations

import asyncio
from unittest.mock import patch

import pytest

from deployments.llm import SpeechTokenLLM
from tts_core.settings import Settings
from tts_core.wire import SpeechTokenRequest
from tts_model.frontend import TextFrontend

TEXTS = ["Hello, how are you today?", "This is a much longer sentence that the model will need to speak aloud.",
         "Short one.", "Another sentence of medium length here, please."]


class InjectedFault(RuntimeError):
    pass


@pytest.fixture(scope="module")
def llm(tiny_model) -> SpeechTokenLLM:
    """The deployment's class on the session's tiny model (loaded once), without Ray."""
    with patch("deployments.llm.load_stage", return_value=(tiny_model, True)):
        return SpeechTokenLLM.func_or_class(Settings())


@pytest.fixture(scope="module")
def text_requests(tiny_model) -> list[SpeechTokenRequest]:
    frontend = TextFrontend(tiny_model.tokenizer)
    return [SpeechTokenRequest(text_token=frontend.tokenize(text), seed=index) for index, text in enumerate(TEXTS)]


def run_all(llm: SpeechTokenLLM, batch: list[SpeechTokenRequest]) -> list:
    async def together() -> list:
        return await asyncio.gather(*(llm.generate_all(request) for request in batch), return_exceptions=True)

    return asyncio.run(together())


def test_a_failing_request_fails_alone_and_the_replica_goes_on(llm, text_requests) -> None:
    alone = [run_all(llm, [request])[0] for request in text_requests]
    victim = text_requests[1]
    sample = llm.decoder.sample

    def faulty_sample(logp, state, ignore_eos, **options):
        if state.generator.initial_seed() == victim.seed and state.step == 5:
            raise InjectedFault("injected")
        return sample(logp, state, ignore_eos, **options)

    llm.decoder.sample = faulty_sample
    try:
        together = run_all(llm, text_requests)
    finally:
        del llm.decoder.sample
    assert isinstance(together[1], InjectedFault)
    assert [together[index] for index in (0, 2, 3)] == [alone[index] for index in (0, 2, 3)]
    assert run_all(llm, text_requests) == alone  # later requests, batched again, are unaffected
    assert llm.stats()["active_sequences"] == 0
