"""Flow-matching decoder deployment: speech tokens -> mel, one chunk or one utterance per call."""

from __future__ import annotations

import threading

import numpy as np
from ray import serve

from deployments.metrics import StageLoad
from deployments.model_stage import load_stage
from serve_app.settings import Settings
from tts_model.token2wav import FlowPrompt, flow_mel


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
class FlowDecoder:
    """Stateless: the stream's token offset arrives with each call."""

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["flow"])
        self.lock = threading.Lock()
        self.load = StageLoad("flow")

    def decode(self, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
               finalize: bool) -> np.ndarray:
        """Mel [80, T] of `tokens[token_offset:]` (the earlier tokens give context)."""
        with self.load, self.lock:  # one forward at a time per model copy
            return flow_mel(self.model.flow, tokens, prompt, token_offset, streaming, finalize,
                            self.model.token_mel_ratio)

    def check_health(self) -> None:
        if self.model.flow is None:
            raise RuntimeError("flow decoder not loaded")
