"""Text frontend deployment: text -> token segments, prompt audio -> voice features."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from ray import serve

from deployments.metrics import StageLoad, metric
from deployments.model_stage import load_stage
from tts_core.settings import Settings
from tts_core.wire import VoiceFeatures
from tts_model.frontend import END_OF_PROMPT, TextFrontend, VoiceFeatureExtractor, voice_from_spk2info

#: Uploaded prompts whose features a replica keeps (about 0.1 MB each for a 10 s prompt).
PROMPT_FEATURE_CACHE_ENTRIES = 256


def prompt_key(samples: np.ndarray, sample_rate: int, prompt_text: str | None) -> bytes:
    """A digest of everything the features of an uploaded prompt depend on."""
    digest = hashlib.sha256(np.ascontiguousarray(samples).tobytes())
    digest.update(f"{samples.dtype.str}|{samples.shape}|{sample_rate}|{prompt_text or ''}".encode())
    return digest.digest()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16)
class TextFrontendDeployment:
    """CPU-only work that prepares model inputs; it holds the tokenizer and the two ONNX networks."""

    def __init__(self, settings: Settings):
        # The front end's ONNX networks are small and run on CPU wherever the models run.
        self.model, self.is_twin = load_stage(settings, ["frontend"], device="cpu")
        self.load = StageLoad("frontend")
        self.text = TextFrontend(self.model.tokenizer)
        self.voices = VoiceFeatureExtractor(self.model)
        self.pretrained = {speaker: voice_from_spk2info(entry)
                           for speaker, entry in self.model.spk2info.items()}
        # Clients of upstream's API upload the same prompt with every request: its features are
        # extracted once (the same features: the networks are deterministic), least recently used dropped.
        self.prompt_features: OrderedDict[bytes, VoiceFeatures] = OrderedDict()
        # The replica runs its calls in a thread pool: a hit's move to the end and another call's
        # eviction of the oldest entry must not interleave (the hit would find its key gone).
        self.prompt_features_lock = threading.Lock()

    def model_info(self) -> dict:
        return {"model_dir": str(self.model.model_dir), "is_twin": self.is_twin, "sample_rate": self.model.sample_rate}

    def text_segments(self, text: str) -> list[list[int]]:
        """Normalise and split `text`; one token list per segment the model speaks in one go."""
        with self.load:
            return self.text.segments(text)

    def streamed_text_tokens(self, piece: str, space_before: bool) -> list[int]:
        """Tokens of one piece of text that is still being written (ending at a word boundary),
        normalised on its own. `space_before`: a space separates it from the text before."""
        with self.load:
            normalized = self.text.normalize(piece, split=False, streamed=True)
            if not normalized or not normalized[0].strip():
                return []
            return self.text.tokenize((" " if space_before else "") + normalized[0])

    def instruction_tokens(self, instruct_text: str) -> list[int]:
        """CosyVoice2's instruct prompt: the instruction, then the end-of-prompt token."""
        return self.text.tokenize(instruct_text.strip() + END_OF_PROMPT)

    def extract_voice(self, samples: np.ndarray, sample_rate: int, prompt_text: str | None = None) -> VoiceFeatures:
        """Model features of a prompt recording (any rate; resampled to 16 kHz; 0.5-30 s), kept
        for the next upload of the same recording and transcript."""
        key = prompt_key(samples, sample_rate, prompt_text)
        with self.prompt_features_lock:
            if (features := self.prompt_features.get(key)) is not None:
                self.prompt_features.move_to_end(key)
        if features is not None:
            metric("cosyvoice_prompt_features_total").inc(tags={"source": "cached"})
            return features
        with self.load:
            speech_16k = self.voices.to_prompt_rate(samples, sample_rate)
            text_tokens = self.text.prompt_tokens(prompt_text) if prompt_text and prompt_text.strip() else []
            features = self.voices.extract(speech_16k, text_tokens)
        metric("cosyvoice_prompt_features_total").inc(tags={"source": "extracted"})
        with self.prompt_features_lock:
            self.prompt_features[key] = features
            while len(self.prompt_features) > PROMPT_FEATURE_CACHE_ENTRIES:
                self.prompt_features.popitem(last=False)
        return features

    def pretrained_voices(self) -> dict[str, VoiceFeatures]:
        return self.pretrained

    def check_health(self) -> None:
        if self.model.tokenizer is None or self.model.speech_tokenizer is None:
            raise RuntimeError("frontend model not loaded")
