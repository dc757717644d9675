"""Speaking text while it is written, through the deployments: the audio upstream's
`inference_bistream` + `token2wav` produce, batched with ordinary requests, and paced by its consumer."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import torch

from deployments.bistream_inbox import bistream_inbox_actor
from tests.deployments.test_pipeline import INSTRUCTION, PROMPT_TEXT, TEXT, collect
from tests.reference import finishing_seed, upstream_bistream_tts
from tts_core.modes import SynthesisMode
from tts_core.wire import BistreamInput, BistreamJob, SynthesisChunk, SynthesisJob
from tts_model.frontend import TextFrontend, voice_from_spk2info

#: Text as a language model writes it: word by word, spaces in front.
PIECES = ["Hello", " there,", " this", " is", " a", " test", " of", " speaking", " while", " the", " text", " is",
          " still", " being", " written", " by", " somebody", " who", " types", " rather", " slowly."]
MODES = [SynthesisMode.SFT, SynthesisMode.ZERO_SHOT, SynthesisMode.INSTRUCT]


@pytest.fixture(scope="module")
def inbox(serve_cluster):
    return bistream_inbox_actor(serve_cluster["app_name"])


async def speak(pipeline, inbox, job: BistreamJob, pieces: list[list[int]], gap_s: float) -> list[SynthesisChunk]:
    """Run a bistream job, posting its text token pieces `gap_s` apart, then the end of the text."""
    async def write() -> None:
        for tokens in pieces:
            await inbox.put.remote(job.key, BistreamInput(text_token=tokens))
            await asyncio.sleep(gap_s)
        await inbox.put.remote(job.key, BistreamInput(text_end=True))

    writer = asyncio.create_task(write())
    chunks = [chunk async for chunk in pipeline.options(stream=True).synthesize_bistream.remote(job)]
    await writer
    return chunks


def upstream_input(tiny_model, mode: SynthesisMode, prompt_16k: np.ndarray) -> dict:
    """Upstream's frontend_* with the text as a generator of pieces (each tokenised on its own)."""
    from tests.reference import upstream_frontend

    reference = upstream_frontend(tiny_model)
    pieces = (piece for piece in PIECES)  # upstream takes a generator (not any iterator) as streamed text
    [prompt_text] = TextFrontend(tiny_model.tokenizer).normalize(PROMPT_TEXT, split=False)
    speech = torch.from_numpy(prompt_16k).unsqueeze(0)
    if mode is SynthesisMode.SFT:
        return reference.frontend_sft(pieces, "pretrained_voice_001")
    if mode is SynthesisMode.ZERO_SHOT:
        return reference.frontend_zero_shot(pieces, prompt_text, speech, 24000, "")
    return reference.frontend_instruct2(pieces, INSTRUCTION, speech, 24000, "")


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_audio_equals_upstream_bistream(mode, tiny_model, pipeline_handle, frontend_handle, inbox,
                                        prompt_16k) -> None:
    if mode is SynthesisMode.SFT:
        voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    else:
        voice = frontend_handle.extract_voice.remote(prompt_16k, 16000, PROMPT_TEXT).result()
    seed, (expected_tokens, expected) = finishing_seed(
        lambda seed: upstream_bistream_tts(tiny_model, upstream_input(tiny_model, mode, prompt_16k), seed))
    job = BistreamJob(key=uuid.uuid4().hex, mode=mode, voice=voice, instruct_text=INSTRUCTION, seed=seed)
    pieces = [tiny_model.tokenizer.encode(piece, allowed_special="all") for piece in PIECES]
    # Ordinary requests decode in the same batched steps meanwhile, and still get their own audio.
    others = [SynthesisJob(SynthesisMode.SFT, TEXT, voice_from_spk2info(tiny_model.spk2info["pretrained_voice_002"]),
                           stream=index == 0, seed=40 + index) for index in range(2)]
    alone = [np.concatenate([chunk.pcm for chunk in collect(pipeline_handle, other)]) for other in others]

    async def together() -> tuple:
        async def ordinary(other: SynthesisJob) -> np.ndarray:
            return np.concatenate([c.pcm async for c in pipeline_handle.options(stream=True).synthesize.remote(other)])

        return await asyncio.gather(speak(pipeline_handle, inbox, job, pieces, gap_s=0.05),
                                    *(ordinary(other) for other in others))

    chunks, *ordinary_audio = asyncio.run(together())
    assert [len(chunk.pcm) for chunk in chunks] == [len(chunk) for chunk in expected]
    assert len(chunks) >= 2 and chunks[-1].segment_done and chunks[-1].tokens == len(expected_tokens)
    assert np.max(np.abs(np.concatenate([c.pcm for c in chunks]) - np.concatenate(expected))) <= 1e-4
    for produced, wanted in zip(ordinary_audio, alone, strict=True):
        assert produced.shape == wanted.shape and np.max(np.abs(produced - wanted)) <= 1e-4
    # Each chunk says how much of the text the model had read; by the end, all of it.
    fed = [chunk.text_tokens for chunk in chunks]
    assert fed == sorted(fed) and fed[-1] == sum(map(len, pieces))


def test_a_sequence_runs_no_further_ahead_of_its_consumer_than_allowed(tiny_model, pipeline_handle, inbox) -> None:
    voice = voice_from_spk2info(tiny_model.spk2info["pretrained_voice_001"])
    # The first streamed chunk needs 28 tokens, the second 53: with 40 allowed, the second waits.
    job = BistreamJob(key=uuid.uuid4().hex, mode=SynthesisMode.SFT, voice=voice, seed=1, ahead_tokens=40)
    text = tiny_model.tokenizer.encode(" ".join(PIECES * 3), allowed_special="all")

    async def run() -> tuple[SynthesisChunk, list[SynthesisChunk]]:
        await inbox.put.remote(job.key, BistreamInput(text_token=text, text_end=True))
        stream = pipeline_handle.options(stream=True).synthesize_bistream.remote(job)
        first = await stream.__anext__()
        following = asyncio.ensure_future(stream.__anext__())
        done, _ = await asyncio.wait({following}, timeout=5.0)
        assert not done, "the sequence went on without an acknowledgement"
        await inbox.put.remote(job.key, BistreamInput(acked_tokens=first.tokens))
        after = [await following]
        await inbox.put.remote(job.key, BistreamInput(acked_tokens=after[0].tokens))
        async for chunk in stream:
            after.append(chunk)
            await inbox.put.remote(job.key, BistreamInput(acked_tokens=chunk.tokens))
        return first, after

    first, after = asyncio.run(asyncio.wait_for(run(), 300))
    assert first.tokens <= 40
    assert after[-1].segment_done and after[-1].tokens > 100
