"""HiFT vocoder deployment: mel -> 24 kHz waveform, cross-fading streamed chunks."""

from __future__ import annotations

import threading

import numpy as np
from ray import serve

from deployments.metrics import StageLoad
from deployments.model_stage import load_stage
from serve_app.settings import Settings
from tts_model.token2wav import VocoderCache, vocode


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=8)
class Vocoder:
    """Stateless: the stream's HiFT cache arrives with each call and the next one is returned."""

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["hift"])
        # vocode seeds torch's global RNG around HiFT: one call at a time keeps that private.
        self.lock = threading.Lock()
        self.load = StageLoad("vocoder")

    def vocode(self, mel: np.ndarray, cache: VocoderCache | None, finalize: bool, speed: float,
               seed: int) -> tuple[np.ndarray, VocoderCache | None]:
        with self.load, self.lock:
            return vocode(self.model.hift, mel, cache, finalize, speed, seed)

    def check_health(self) -> None:
        if self.model.hift is None:
            raise RuntimeError("vocoder not loaded")
