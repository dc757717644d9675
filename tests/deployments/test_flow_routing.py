"""Every flow call of one stream goes to the replica that keeps its decoder state: the pipeline names
the stream as the call's session id, and the flow deployment routes by it, on a consistent-hash ring,
with no fallback to another replica while the stream's one is alive."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from deployments.flow import FlowDecoder
from deployments.pipeline import SynthesisPipeline, _SegmentStream
from tts_core.timing import StageTimes
from tts_core.wire import FlowPrompt
from tts_model.chunk_schedule import ChunkPlan


class FakeFlowHandle:
    """Records the session id each flow call was routed under."""

    def __init__(self, calls: list[tuple[str | None, int]], session_id: str | None = None):
        self.calls, self.session_id = calls, session_id
        self.decode = self

    def options(self, session_id: str) -> FakeFlowHandle:
        return FakeFlowHandle(self.calls, session_id)

    async def remote(self, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
                     finalize: bool, stream_key: str | None) -> np.ndarray:
        self.calls.append((self.session_id, token_offset))
        assert stream_key == self.session_id  # the state's key and the routing key are one
        return np.zeros((80, 4), dtype=np.float32)


class FakeVocoder:
    def __init__(self) -> None:
        self.vocode = self

    async def remote(self, mel: np.ndarray, cache: Any, finalize: bool, speed: float, seed: int) -> tuple:
        return np.zeros(480, dtype=np.float32), None


class RecordingPipeline:
    """The real pipeline over a recording flow handle and a silent vocoder."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int]] = []
        self.pipeline = SynthesisPipeline.func_or_class(frontend=None, llm=None, flow=FakeFlowHandle(self.calls),
                                                        vocoder=FakeVocoder(), recovery_timeout_s=1.0)


def decode_chunks(recording: RecordingPipeline, stream: bool, chunks: int) -> None:
    prompt = FlowPrompt(np.zeros(0, np.int32), np.zeros((0, 80), np.float32), np.ones(192, np.float32))
    segment = _SegmentStream(recording.pipeline, prompt, seed=0, segment=0, segments=1, times=StageTimes(),
                             stream=stream)
    plans = [ChunkPlan(end=25 * (index + 1), token_offset=25 * index, streaming=stream, finalize=index == chunks - 1)
             for index in range(chunks)]

    async def run() -> None:
        for plan in plans:
            await segment.decode(list(range(plan.end)), plan, text_tokens=5)

    asyncio.run(run())


def test_every_chunk_of_a_stream_is_routed_by_that_stream() -> None:
    recording = RecordingPipeline()
    decode_chunks(recording, stream=True, chunks=4)
    decode_chunks(recording, stream=True, chunks=3)
    sessions = [session for session, _ in recording.calls]
    assert None not in sessions
    assert len(set(sessions[:4])) == 1 and len(set(sessions[4:])) == 1 and sessions[0] != sessions[4]


def test_whole_utterances_are_not_pinned() -> None:
    recording = RecordingPipeline()
    decode_chunks(recording, stream=False, chunks=1)
    assert recording.calls == [(None, 0)]


def test_flow_replicas_are_chosen_by_consistent_hashing_without_fallback() -> None:
    config = FlowDecoder._deployment_config.request_router_config
    # Serve keeps the class as its import path.
    assert config.request_router_class == f"{ConsistentHashRouter.__module__}.{ConsistentHashRouter.__name__}"
    assert config.request_router_kwargs == {"num_fallback_replicas": 0}
