"""Flow-matching decoder deployment: speech tokens -> mel, one chunk or one utterance per call."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from deployments.metrics import StageLoad
from deployments.model_stage import load_stage
from serve_app.settings import Settings
from tts_model.token2wav import FlowPrompt, FlowRequest, flow_mel_batch


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16)
class FlowDecoder:
    """Stateless: the stream's token offset arrives with each call.

    Concurrent calls are batched: those that arrive while a batch runs form the next one, so a
    busy replica runs one estimator pass for many streams and an idle one waits for nobody.
    """

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["flow"])
        # One thread runs every batch: warm kernel caches and one malloc arena, not one per pool thread.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.load = StageLoad("flow")
        self.decode_batch.set_max_batch_size(settings.flow_max_batch_size)
        self.decode_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def decode(self, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
                     finalize: bool) -> np.ndarray:
        """Mel [80, T] of `tokens[token_offset:]` (the earlier tokens give context)."""
        with self.load:
            return await self.decode_batch(FlowRequest(tokens, prompt, token_offset, streaming, finalize))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def decode_batch(self, requests: list[FlowRequest]) -> list[np.ndarray]:
        # One batch at a time (serve.batch's default), off the event loop so calls keep queueing.
        return await asyncio.get_running_loop().run_in_executor(self.worker, flow_mel_batch, self.model.flow, requests,
                                                               self.model.token_mel_ratio)

    def check_health(self) -> None:
        if self.model.flow is None:
            raise RuntimeError("flow decoder not loaded")
