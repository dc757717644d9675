"""The front end's replica keeps the features of uploaded prompts: a client that uploads the same
recording and transcript with every request (as upstream's API has it do) pays for the extraction
once, and gets exactly the features a fresh extraction gives."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import patch

import numpy as np
import pytest

from deployments.frontend import TextFrontendDeployment
from tts_core.settings import Settings
from tts_core.wire import VoiceFeatures


@pytest.fixture()
def frontend(tiny_model) -> TextFrontendDeployment:
    """The deployment's class on the session's tiny model, without Ray."""
    with patch("deployments.frontend.load_stage", return_value=(tiny_model, True)):
        return TextFrontendDeployment.func_or_class(Settings())


def recording(seconds: float = 3.0, rate: int = 16000, f0: float = 150.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def same(first: VoiceFeatures, second: VoiceFeatures) -> bool:
    return all(np.array_equal(getattr(first, name), getattr(second, name))
               for name in ("speech_token", "speech_feat", "embedding", "prompt_text_token"))


def test_a_reuploaded_prompt_is_extracted_once(frontend: TextFrontendDeployment) -> None:
    samples = recording()
    with patch.object(frontend.voices, "extract", wraps=frontend.voices.extract) as extract:
        first = frontend.extract_voice(samples, 16000, "Hello there.")
        again = frontend.extract_voice(samples.copy(), 16000, "Hello there.")
        assert extract.call_count == 1
        assert same(first, again)
        # A different transcript, recording or rate is another prompt.
        other_text = frontend.extract_voice(samples, 16000, "Something else entirely.")
        other_audio = frontend.extract_voice(recording(f0=220.0), 16000, "Hello there.")
        other_rate = frontend.extract_voice(samples, 22050, "Hello there.")
        assert extract.call_count == 4
    assert not np.array_equal(other_text.prompt_text_token, first.prompt_text_token)
    assert not np.array_equal(other_audio.speech_feat, first.speech_feat)
    assert other_rate.speech_feat.shape != first.speech_feat.shape
    # What was kept is what a fresh extraction gives.
    frontend.prompt_features.clear()
    assert same(frontend.extract_voice(samples, 16000, "Hello there."), again)


def test_bad_prompts_are_refused_every_time_and_the_cache_stays_bounded(frontend: TextFrontendDeployment) -> None:
    from tts_core.wire import FrontendError

    for _ in range(2):
        with pytest.raises(FrontendError):
            frontend.extract_voice(np.zeros(16000, dtype=np.float32), 16000, "Silence.")
    assert not frontend.prompt_features
    with patch("deployments.frontend.PROMPT_FEATURE_CACHE_ENTRIES", 2):
        for f0 in (120.0, 140.0, 160.0):
            frontend.extract_voice(recording(f0=f0), 16000, "Hello.")
        assert len(frontend.prompt_features) == 2


def test_a_fresh_replicas_first_extractions_may_run_at_once(tiny_model) -> None:
    """A replica runs its calls in a thread pool: the first registrations after a start arrive together."""
    import matcha.utils.audio
    import torch

    hann_window = torch.hann_window

    def as_slow_as_a_first_call(*args, **kwargs):
        time.sleep(0.05)
        return hann_window(*args, **kwargs)

    # What a fresh replica process starts with: upstream's mel function has cached nothing yet,
    # and torch's first calls are slow.
    matcha.utils.audio.mel_basis.clear()
    matcha.utils.audio.hann_window.clear()
    with patch("deployments.frontend.load_stage", return_value=(tiny_model, True)), \
            patch("torch.hann_window", as_slow_as_a_first_call):
        fresh = TextFrontendDeployment.func_or_class(Settings())
        samples = recording()
        with ThreadPoolExecutor(6) as pool:
            calls = []
            for index in range(6):  # arriving a few milliseconds apart
                calls.append(pool.submit(fresh.extract_voice, samples, 16000, f"Take {index}."))
                time.sleep(0.01)
            extracted = [call.result() for call in calls]
    assert len({features.speech_feat.tobytes() for features in extracted}) == 1


def test_the_cache_holds_under_concurrent_hits_and_evictions(frontend: TextFrontendDeployment) -> None:
    """A hit that moves its entry to the end while another call evicts the oldest must find it
    still there, whichever thread the interpreter switches to in between."""
    prompts = [recording(seconds=0.6, f0=100.0 + 10 * index) for index in range(4)]

    def extracted(speech_16k, text_tokens) -> VoiceFeatures:  # the networks' cost is not what is tested
        return VoiceFeatures(speech_token=np.zeros(1, np.int32), speech_feat=np.zeros((2, 80), np.float32),
                             embedding=np.zeros(192, np.float32), prompt_text_token=np.zeros(0, np.int32))

    def register(index: int) -> None:
        frontend.extract_voice(prompts[index % len(prompts)], 16000, "Hello.")

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads trade the interpreter as often as it allows
    try:
        with patch.object(frontend.voices, "extract", extracted), \
                patch("deployments.frontend.PROMPT_FEATURE_CACHE_ENTRIES", 2), ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(4000)))
    finally:
        sys.setswitchinterval(switch_interval)
    assert len(frontend.prompt_features) == 2
