"""The orchestrator: composes frontend, LLM, flow and vocoder into one stream of audio.

It relays the LLM's token stream into flow and vocoder calls and yields PCM as soon as each
chunk is decoded. The per-stream state that decides the audio (tokens so far, the chunk
schedule, the vocoder cache, the seeds) lives in the request's own generator here and travels
with each call, so any replica can serve any chunk; the flow replica also caches a stream's
decoder state, for speed only.

That is also what makes a replica's death invisible but for a delay: a stage call that fails
because its replica is gone is made again, on another or the restarted replica, and gives the
same result (flow and vocoder calls are pure given their inputs; the LLM's sampling is seeded
per segment, so a segment generated again yields the same tokens, and those already relayed are
skipped). A stage gone for longer than `recovery_timeout_s` fails the request. A bistream
utterance (text streamed in) cannot be replayed that way, as its text went to the lost LLM
sequence: losing its LLM replica fails it; its flow and vocoder calls are retried as any.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.failures import ReplicaRecovery, replica_gone
from deployments.metrics import StageLoad, metric
from deployments.replica_logging import quiet_health_checks
from tts_core.modes import ModeInputs, SynthesisMode, mode_inputs
from tts_core.timing import StageTimes
from tts_core.wire import (
    BistreamJob,
    BistreamRequest,
    FlowPrompt,
    SpeechTokenRequest,
    SynthesisChunk,
    SynthesisJob,
    VocoderCache,
    VoiceFeatures,
)
from tts_model.chunk_schedule import ChunkPlan, StreamPlanner, chunk_seed, segment_seed

T = TypeVar("T")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class SynthesisPipeline:
    def __init__(self, frontend: DeploymentHandle, llm: DeploymentHandle,
                 flow: DeploymentHandle, vocoder: DeploymentHandle, recovery_timeout_s: float):
        quiet_health_checks()
        self.frontend, self.llm, self.flow, self.vocoder = frontend, llm, flow, vocoder
        self.recovery_timeout_s = recovery_timeout_s
        self.sample_rate: int | None = None
        self.load = StageLoad("pipeline")

    async def synthesize(self, job: SynthesisJob) -> AsyncIterator[SynthesisChunk]:
        async for chunk in self._measured(self._chunks(job), job.mode, str(job.stream).lower()):
            yield chunk

    async def synthesize_bistream(self, job: BistreamJob) -> AsyncIterator[SynthesisChunk]:
        """Speak one utterance whose text is still being written, streamed.

        The text goes to the LLM sequence through the inbox under `job.key` (the caller posts it
        there); this relays the sequence's tokens into flow and vocoder calls chunk by chunk, as
        streaming synthesis does, and ends once the sequence has spoken the whole text.
        """
        async for chunk in self._measured(self._bistream_chunks(job), job.mode, "bistream"):
            yield chunk

    async def _measured(self, chunks: AsyncIterator[SynthesisChunk], mode: SynthesisMode,
                        stream: str) -> AsyncIterator[SynthesisChunk]:
        started, first_chunk, samples = time.perf_counter(), True, 0
        sample_rate = await self._sample_rate()
        with self.load:
            async for chunk in chunks:
                if first_chunk:
                    metric("cosyvoice_time_to_first_chunk_seconds").observe(
                        time.perf_counter() - started, tags={"mode": str(mode), "stream": stream})
                    first_chunk = False
                samples += len(chunk.pcm)
                yield chunk
        seconds = samples / sample_rate
        metric("cosyvoice_audio_seconds_total").inc(seconds, tags={"mode": str(mode)})
        if seconds > 0:
            metric("cosyvoice_real_time_factor").observe((time.perf_counter() - started) / seconds,
                                                         tags={"mode": str(mode)})

    async def _mode_inputs(self, mode: SynthesisMode, voice: VoiceFeatures, instruct_text: str | None) -> ModeInputs:
        instruction = (await self.call("frontend", self.frontend.instruction_tokens, instruct_text)
                       if mode is SynthesisMode.INSTRUCT else None)
        return mode_inputs(mode, voice, instruction)

    async def _chunks(self, job: SynthesisJob) -> AsyncIterator[SynthesisChunk]:
        times = StageTimes()
        segments = job.text_segments
        if not segments:
            with times.measure("text"):
                segments = await self.call("frontend", self.frontend.text_segments, job.text)
        inputs = await self._mode_inputs(job.mode, job.voice, job.instruct_text)
        for index, text_token in enumerate(segments):
            request = SpeechTokenRequest(text_token=text_token, prompt_text_token=inputs.llm_prompt_text,
                                         prompt_speech_token=inputs.llm_prompt_speech,
                                         seed=segment_seed(job.seed, index))
            planner = StreamPlanner(prompt_token_len=len(inputs.flow_prompt.speech_token), stream=job.stream)
            tokens: list[int] = []
            stream = _SegmentStream(self, inputs.flow_prompt, job.seed, index, len(segments), times, job.speed,
                                    job.stream)
            if job.stream:
                async for new_tokens in _timed_tokens(self._speech_tokens(request), times):
                    tokens.extend(new_tokens)
                    while plan := planner.next_chunk(len(tokens), llm_finished=False):
                        yield await stream.decode(tokens, plan, len(text_token))
            else:  # nothing to do before the last token: one reply instead of a stream
                with times.measure("llm"):
                    tokens = await self.call("llm", self.llm.generate_all, request)
            while plan := planner.next_chunk(len(tokens), llm_finished=True):
                yield await stream.decode(tokens, plan, len(text_token))

    async def _bistream_chunks(self, job: BistreamJob) -> AsyncIterator[SynthesisChunk]:
        times = StageTimes()
        inputs = await self._mode_inputs(job.mode, job.voice, job.instruct_text)
        request = BistreamRequest(key=job.key, prompt_text_token=inputs.llm_prompt_text,
                                  prompt_speech_token=inputs.llm_prompt_speech,
                                  seed=segment_seed(job.seed, job.segment), ahead_tokens=job.ahead_tokens)
        planner = StreamPlanner(prompt_token_len=len(inputs.flow_prompt.speech_token), stream=True)
        stream = _SegmentStream(self, inputs.flow_prompt, job.seed, job.segment, job.segment + 1, times)
        tokens: list[int] = []
        text_fed = 0
        # The LLM waits for text the client has not written yet: its time is the writer's as much as the model's.
        async for ready in _timed_tokens(self.llm.options(stream=True).generate_bistream.remote(request), times):
            tokens.extend(ready.tokens)
            text_fed = ready.text_tokens_fed
            while plan := planner.next_chunk(len(tokens), llm_finished=False):
                yield await stream.decode(tokens, plan, text_fed)
        while tokens and (plan := planner.next_chunk(len(tokens), llm_finished=True)):
            yield await stream.decode(tokens, plan, text_fed)

    async def _speech_tokens(self, request: SpeechTokenRequest) -> AsyncIterator[list[int]]:
        """The LLM's tokens of one segment as they are sampled. If the LLM replica goes away, the
        segment is generated again with the same seed and the tokens already relayed are skipped."""
        recovery, relayed = ReplicaRecovery("llm", self.recovery_timeout_s), 0
        while True:
            stream, seen = self.llm.options(stream=True).generate.remote(request), 0
            try:
                while True:
                    ready = await recovery.bounded(anext(stream, None))
                    if ready is None:
                        return
                    fresh, seen = ready[max(0, relayed - seen):], seen + len(ready)
                    if fresh:
                        relayed += len(fresh)
                        recovery.progressed()
                        yield fresh
            except Exception as exc:
                stream.cancel()
                if not replica_gone(exc):
                    raise
                await recovery.wait(exc)

    async def call(self, stage: str, method: Any, *args: Any) -> Any:
        """`await method.remote(*args)` on a stage's handle, made again while the stage's replica is
        gone (see the module docstring)."""
        recovery = ReplicaRecovery(stage, self.recovery_timeout_s)
        while True:
            response = method.remote(*args)
            try:
                return await recovery.bounded(response)
            except Exception as exc:
                response.cancel()
                if not replica_gone(exc):
                    raise
                await recovery.wait(exc)

    async def _sample_rate(self) -> int:
        if self.sample_rate is None:
            self.sample_rate = (await self.call("frontend", self.frontend.model_info))["sample_rate"]
        return self.sample_rate

    async def check_health(self) -> None:
        return None


async def _timed_tokens(tokens: AsyncIterator[T], times: StageTimes) -> AsyncIterator[T]:
    """`tokens`, with the wait for each reply added to `times`: the first as `llm_first` (queue,
    prefill and first step), the others as `llm`."""
    stage = "llm_first"
    while True:
        with times.measure(stage):
            ready = await anext(tokens, None)
        if ready is None:
            return
        stage = "llm"
        yield ready


class _SegmentStream:
    """The state of one segment's token2wav stream: which chunk comes next, the vocoder cache.
    Each chunk carries the stage times in `times` since the chunk before it."""

    def __init__(self, pipeline: SynthesisPipeline, prompt: FlowPrompt, seed: int, segment: int, segments: int,
                 times: StageTimes, speed: float = 1.0, stream: bool = True):
        self.pipeline, self.prompt, self.seed, self.speed, self.times = pipeline, prompt, seed, speed, times
        self.segment, self.segments = segment, segments
        self.chunk = 0
        self.cache: VocoderCache | None = None
        # Names the stream to the flow decoder, which keeps its decoder state between chunks; as the
        # session id it also sends every chunk to the replica holding that state.
        self.key = uuid.uuid4().hex if stream else None
        self.flow = pipeline.flow.options(session_id=self.key) if self.key else pipeline.flow

    async def decode(self, tokens: list[int], plan: ChunkPlan, text_tokens: int) -> SynthesisChunk:
        pipeline, seed = self.pipeline, chunk_seed(self.seed, self.segment, self.chunk)
        with self.times.measure("flow"):
            mel = await pipeline.call("flow", self.flow.decode, tokens[: plan.end], self.prompt, plan.token_offset,
                                      plan.streaming, plan.finalize, self.key)
        with self.times.measure("vocoder"):
            pcm, self.cache = await pipeline.call("vocoder", pipeline.vocoder.vocode, mel, self.cache,
                                                  plan.finalize, self.speed, seed)
        self.chunk += 1
        return SynthesisChunk(pcm=pcm, segment=self.segment, segments=self.segments, tokens=len(tokens),
                              text_tokens=text_tokens, segment_done=plan.finalize, stage_seconds=self.times.take())
