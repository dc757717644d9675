"""The four deployments as one Ray Serve graph: fidelity to upstream, streaming, modes, inputs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from tests.reference import upstream_frontend, upstream_tts
from tts_core.modes import SynthesisMode
from tts_core.wire import FrontendError, SynthesisJob
from tts_model.frontend import TextFrontend, voice_from_spk2info

PROMPT_TEXT = "Hello, this is a sample of my voice."
INSTRUCTION = "Please speak in a happy and energetic tone"
TEXT = "Hello! This is a test of voice cloning using the CosyVoice2 API, with several words to speak."


def collect(handle, job: SynthesisJob) -> list:
    async def run() -> list:
        return [chunk async for chunk in handle.options(stream=True).synthesize.remote(job)]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def reference(tiny_model):
    return upstream_frontend(tiny_model)


def reference_input(tiny_model, reference, mode: SynthesisMode, text: str, prompt_16k: np.ndarray) -> dict:
    """Upstream's frontend_* for one mode (text and transcript normalised as the service does)."""
    normalizer = TextFrontend(tiny_model.tokenizer)
    [segment] = normalizer.normalize(text)
    [prompt_text] = normalizer.normalize(PROMPT_TEXT, split=False)
    speech = torch.from_numpy(prompt_16k).unsqueeze(0)
    if mode is SynthesisMode.SFT:
        return reference.frontend_sft(segment, "pretrained_voice_001")
    if mode is SynthesisMode.ZERO_SHOT:
        return reference.frontend_zero_shot(segment, prompt_text, speech, 24000, "")
    if mode is SynthesisMode.CROSS_LINGUAL:
        return reference.frontend_cross_lingual(segment, speech, 24000, "")
    return reference.frontend_instruct2(segment, INSTRUCTION, speech, 24000, "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streaming"])
@pytest.mark.parametrize("mode", list(SynthesisMode), ids=lambda mode: mode.value)
def test_audio_equals_upstream(mode, stream, tiny_model, reference, pipeline_handle, frontend_handle,
                               prompt_16k) -> None:
    if mode is SynthesisMode.SFT:
        voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    else:
        voice = frontend_handle.extract_voice.remote(prompt_16k, 16000, PROMPT_TEXT).result()
    job = SynthesisJob(mode=mode, text=TEXT, voice=voice, instruct_text=INSTRUCTION, stream=stream, seed=11)
    chunks = collect(pipeline_handle, job)

    expected = upstream_tts(tiny_model, reference_input(tiny_model, reference, mode, TEXT, prompt_16k), stream,
                            seed=11)
    assert [len(chunk.pcm) for chunk in chunks] == [len(chunk) for chunk in expected]
    assert len(expected) >= (2 if stream else 1)
    produced, wanted = np.concatenate([c.pcm for c in chunks]), np.concatenate(expected)
    assert np.max(np.abs(produced - wanted)) <= 1e-4


def test_speed_changes_duration_as_upstream(tiny_model, reference, pipeline_handle, prompt_16k) -> None:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    normal = collect(pipeline_handle, SynthesisJob(SynthesisMode.SFT, TEXT, voice, seed=3))
    fast = collect(pipeline_handle, SynthesisJob(SynthesisMode.SFT, TEXT, voice, speed=2.0, seed=3))
    expected = upstream_tts(tiny_model, reference_input(tiny_model, reference, SynthesisMode.SFT, TEXT, prompt_16k),
                            False, seed=3, speed=2.0)
    assert abs(len(fast[0].pcm) - len(normal[0].pcm) / 2) <= 480
    assert np.max(np.abs(fast[0].pcm - expected[0])) <= 1e-4


def test_same_seed_same_audio_other_seed_other_audio(tiny_model, pipeline_handle) -> None:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    runs = [collect(pipeline_handle, SynthesisJob(SynthesisMode.ZERO_SHOT, TEXT, voice, seed=seed))[0].pcm
            for seed in (1, 1, 2)]
    assert np.array_equal(runs[0], runs[1])
    assert runs[0].shape != runs[2].shape or not np.allclose(runs[0], runs[2])


def test_concurrent_streams_get_what_each_gets_alone(tiny_model, pipeline_handle) -> None:
    """Concurrent requests share LLM steps and flow and vocoder batches; none hears the others."""
    voices = [voice_from_spk2info(tiny_model.spk2info[name])
              for name in ("pretrained_voice_001", "pretrained_voice_002")]
    jobs = [SynthesisJob(SynthesisMode.ZERO_SHOT, TEXT if index % 3 else TEXT[:40], voices[index % 2],
                         stream=index % 2 == 0, seed=20 + index) for index in range(6)]
    alone = [np.concatenate([chunk.pcm for chunk in collect(pipeline_handle, job)]) for job in jobs]

    async def together() -> list[list]:
        async def one(job: SynthesisJob) -> list:
            return [chunk async for chunk in pipeline_handle.options(stream=True).synthesize.remote(job)]

        return await asyncio.gather(*(one(job) for job in jobs))

    for chunks, expected in zip(asyncio.run(together()), alone, strict=True):
        produced = np.concatenate([chunk.pcm for chunk in chunks])
        assert produced.shape == expected.shape
        assert np.max(np.abs(produced - expected)) <= 1e-4


def test_first_chunk_arrives_before_the_llm_finishes(tiny_model, pipeline_handle) -> None:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"])
    long_text = " ".join([TEXT] * 2)
    job = SynthesisJob(SynthesisMode.ZERO_SHOT, long_text, voice, stream=True, seed=4)

    async def timed() -> list[tuple[float, object]]:
        started, arrivals = time.perf_counter(), []
        async for chunk in pipeline_handle.options(stream=True).synthesize.remote(job):
            arrivals.append((time.perf_counter() - started, chunk))
        return arrivals

    arrivals = asyncio.run(timed())
    first_time, first = arrivals[0]
    total_time, _ = arrivals[-1]
    tokens_when_first = first.tokens
    last_of_segment = [chunk for _, chunk in arrivals if chunk.segment == first.segment][-1]
    print(f"first chunk after {first_time:.3f} s of {total_time:.3f} s; "
          f"{tokens_when_first} of {last_of_segment.tokens} tokens decoded by then")
    assert len(arrivals) >= 3
    assert not first.segment_done
    # The first chunk was decoded from a prefix of the segment's tokens: the LLM was still going.
    assert tokens_when_first < last_of_segment.tokens
    assert first_time < total_time / 2


def test_long_text_is_split_and_every_segment_spoken(tiny_model, pipeline_handle, frontend_handle) -> None:
    sentence = "This sentence is one of many that together make a long text for the model to read aloud. "
    text = sentence * 12
    segments = frontend_handle.text_segments.remote(text).result()
    assert len(segments) > 1
    assert sum(map(len, segments)) >= 12 * len(TextFrontend(tiny_model.tokenizer).tokenize(sentence.strip())) - 12
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    chunks = collect(pipeline_handle, SynthesisJob(SynthesisMode.SFT, text, voice, seed=0))
    spoken = {chunk.segment for chunk in chunks if chunk.segment_done}
    assert spoken == set(range(len(segments)))
    for chunk in chunks:  # each segment lasts at least its minimum of 2 tokens per text token
        assert len(chunk.pcm) >= 2 * len(segments[chunk.segment]) * 960 * 0.99


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "..."])
def test_empty_text_is_refused(text, frontend_handle) -> None:
    with pytest.raises(FrontendError):
        frontend_handle.text_segments.remote(text).result()


@pytest.mark.parametrize(("seconds", "rate", "amplitude", "message"), [
    (3.0, 16000, 0.0, "silent"),
    (0.3, 16000, 0.5, "at least 0.5"),
    (31.0, 16000, 0.5, "at most 30"),
])
def test_bad_prompt_audio_is_refused(seconds, rate, amplitude, message, frontend_handle) -> None:
    samples = (amplitude * np.sin(np.arange(int(seconds * rate)) * 0.05)).astype(np.float32)
    with pytest.raises(FrontendError, match=message):
        frontend_handle.extract_voice.remote(samples, rate, None).result()


def test_prompt_audio_at_another_rate_is_resampled(frontend_handle, prompt_16k) -> None:
    import torchaudio.functional as AF

    at_16k = frontend_handle.extract_voice.remote(prompt_16k, 16000, PROMPT_TEXT).result()
    at_44k = AF.resample(torch.from_numpy(prompt_16k), 16000, 44100).numpy()
    resampled = frontend_handle.extract_voice.remote(at_44k, 44100, PROMPT_TEXT).result()
    assert abs(len(resampled.speech_token) - len(at_16k.speech_token)) <= 1
    assert resampled.speech_feat.shape[1] == 80 and len(resampled.embedding) == 192
