"""HiFT vocoder deployment: mel -> 24 kHz waveform, cross-fading streamed chunks."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.metrics import StageLoad
from deployments.model_stage import ModelThread, core_budget, load_stage
from tts_core.settings import Settings
from tts_core.wire import VocoderCache
from tts_model.vocode import VocodeRequest, vocode_batch


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
class Vocoder:
    """Stateless: the stream's HiFT cache arrives with each call and the next one is returned.

    Concurrent calls are batched like the flow decoder's; chunks of equal length share HiFT's passes.
    """

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["hift"])
        self.worker = ModelThread(core_budget(settings))
        self.load = StageLoad("vocoder")
        self.vocode_batch.set_max_batch_size(settings.vocoder_max_batch_size)
        self.vocode_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def vocode(self, mel: np.ndarray, cache: VocoderCache | None, finalize: bool, speed: float,
                     seed: int) -> tuple[np.ndarray, VocoderCache | None]:
        with self.load:
            return await self.vocode_batch(VocodeRequest(mel, cache, finalize, speed, seed))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def vocode_batch(self, requests: list[VocodeRequest]) -> list[tuple[np.ndarray, VocoderCache | None]]:
        # vocode_batch seeds torch's global RNG per request: one batch at a time keeps that private.
        return await self.worker.run(vocode_batch, self.model.hift, requests)

    def check_health(self) -> None:
        if self.model.hift is None:
            raise RuntimeError("vocoder not loaded")
