"""The orchestrator: composes frontend, LLM, flow and vocoder into one stream of audio.

It relays the LLM's token stream into flow and vocoder calls and yields PCM as soon as each
chunk is decoded. All per-stream state (tokens so far, the chunk schedule, the vocoder cache)
lives in the request's own generator here and travels with each call, so every model replica
stays stateless and scales on its own.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import StageLoad, metric
from deployments.task_manager import chunk_progress, task_manager_by_name
from serve_app.rendering import render_to_store
from serve_app.settings import Settings
from serve_app.storage import BlobStore
from tts_model.frontend import VoiceFeatures
from tts_model.llm_decode import SpeechTokenRequest
from tts_model.modes import SynthesisMode, mode_inputs
from tts_model.token2wav import ChunkPlan, FlowPrompt, StreamPlanner, VocoderCache, chunk_seed, segment_seed


@dataclass
class SynthesisJob:
    """One synthesis request, with the voice already resolved to its features."""

    mode: SynthesisMode
    text: str
    voice: VoiceFeatures
    instruct_text: str | None = None
    speed: float = 1.0
    stream: bool = False
    seed: int = 0


@dataclass
class SynthesisChunk:
    """A piece of the output waveform and where the job stands."""

    pcm: np.ndarray  # float32 mono at the model's sample rate
    segment: int
    segments: int
    tokens: int  # speech tokens of this segment decoded so far
    text_tokens: int  # text tokens of this segment
    segment_done: bool


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class SynthesisPipeline:
    def __init__(self, settings: Settings, frontend: DeploymentHandle, llm: DeploymentHandle,
                 flow: DeploymentHandle, vocoder: DeploymentHandle):
        self.settings = settings
        self.frontend, self.llm, self.flow, self.vocoder = frontend, llm, flow, vocoder
        self.outputs = BlobStore(settings.output_store_uri)
        self.sample_rate: int | None = None
        self.load = StageLoad("pipeline")

    async def synthesize(self, job: SynthesisJob) -> AsyncIterator[SynthesisChunk]:
        started, first_chunk, samples = time.perf_counter(), True, 0
        sample_rate = await self._sample_rate()
        with self.load:
            async for chunk in self._chunks(job):
                if first_chunk:
                    metric("cosyvoice_time_to_first_chunk_seconds").observe(
                        time.perf_counter() - started, tags={"mode": str(job.mode), "stream": str(job.stream).lower()})
                    first_chunk = False
                samples += len(chunk.pcm)
                yield chunk
        seconds = samples / sample_rate
        metric("cosyvoice_audio_seconds_total").inc(seconds, tags={"mode": str(job.mode)})
        if seconds > 0:
            metric("cosyvoice_real_time_factor").observe((time.perf_counter() - started) / seconds,
                                                         tags={"mode": str(job.mode)})

    async def _chunks(self, job: SynthesisJob) -> AsyncIterator[SynthesisChunk]:
        segments = await self.frontend.text_segments.remote(job.text)
        instruction = (await self.frontend.instruction_tokens.remote(job.instruct_text)
                       if job.mode is SynthesisMode.INSTRUCT else None)
        inputs = mode_inputs(job.mode, job.voice, instruction)
        for index, text_token in enumerate(segments):
            request = SpeechTokenRequest(text_token=text_token, prompt_text_token=inputs.llm_prompt_text,
                                         prompt_speech_token=inputs.llm_prompt_speech,
                                         seed=segment_seed(job.seed, index))
            planner = StreamPlanner(prompt_token_len=len(inputs.flow_prompt.speech_token), stream=job.stream)
            tokens: list[int] = []
            stream = _SegmentStream(self, job, inputs.flow_prompt, index, len(segments), len(text_token))
            if job.stream:
                async for new_tokens in self.llm.options(stream=True).generate.remote(request):
                    tokens.extend(new_tokens)
                    while plan := planner.next_chunk(len(tokens), llm_finished=False):
                        yield await stream.decode(tokens, plan)
            else:  # nothing to do before the last token: one reply instead of a stream
                tokens = await self.llm.generate_all.remote(request)
            while plan := planner.next_chunk(len(tokens), llm_finished=True):
                yield await stream.decode(tokens, plan)

    async def _sample_rate(self) -> int:
        if self.sample_rate is None:
            self.sample_rate = (await self.frontend.model_info.remote())["sample_rate"]
        return self.sample_rate

    async def render(self, job: SynthesisJob, fmt: str, task_id: str) -> dict[str, Any]:
        """Run an async task's job to a stored file, reporting progress to the task manager.

        The job is decoded in streaming chunks so progress rises during each segment.
        """
        sample_rate = await self._sample_rate()
        manager = task_manager_by_name(self.settings.app_name)

        def report(chunk: SynthesisChunk) -> None:
            manager.report_progress.remote(task_id, chunk_progress(chunk.segment, chunk.segments, chunk.tokens,
                                                                   chunk.text_tokens, chunk.segment_done))

        streamed = dataclasses.replace(job, stream=True)
        return await render_to_store(self.synthesize(streamed), job.mode, fmt, self.outputs, sample_rate,
                                     on_chunk=report)

    async def check_health(self) -> None:
        return None


class _SegmentStream:
    """The state of one segment's token2wav stream: which chunk comes next, the vocoder cache."""

    def __init__(self, pipeline: SynthesisPipeline, job: SynthesisJob, prompt: FlowPrompt, segment: int,
                 segments: int, text_tokens: int):
        self.pipeline, self.job, self.prompt = pipeline, job, prompt
        self.segment, self.segments, self.text_tokens = segment, segments, text_tokens
        self.chunk = 0
        self.cache: VocoderCache | None = None
        # Names the stream to the flow decoder, which keeps its decoder state between chunks.
        self.key = uuid.uuid4().hex if job.stream else None

    async def decode(self, tokens: list[int], plan: ChunkPlan) -> SynthesisChunk:
        mel = await self.pipeline.flow.decode.remote(tokens[: plan.end], self.prompt, plan.token_offset,
                                                     plan.streaming, plan.finalize, self.key)
        pcm, self.cache = await self.pipeline.vocoder.vocode.remote(
            mel, self.cache, plan.finalize, self.job.speed, chunk_seed(self.job.seed, self.segment, self.chunk))
        self.chunk += 1
        return SynthesisChunk(pcm=pcm, segment=self.segment, segments=self.segments, tokens=len(tokens),
                              text_tokens=self.text_tokens, segment_done=plan.finalize)
