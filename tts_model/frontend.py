"""CosyVoice2's text and voice front end: what turns text and prompt audio into model inputs.

Upstream's `CosyVoiceFrontEnd` in the installed `cosyvoice` package has its text normalisation
commented out, so normalisation here uses wetext (the offline WeTextProcessing port upstream
falls back to) and upstream's own splitting helpers. Feature extraction follows upstream's
recipe step by step: 16 kHz prompt -> whisper log-mel -> speech tokenizer ONNX; kaldi fbank ->
campplus ONNX -> speaker embedding; 24 kHz resample -> the model's mel extractor.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import partial
from typing import Any

import numpy as np
import torch

from tts_core.limits import MAX_PROMPT_SECONDS, MIN_PROMPT_SECONDS
from tts_core.wire import EMBEDDING_DIM, MEL_BINS, FrontendError, VoiceFeatures
from tts_model import matcha_compat  # noqa: F401

PROMPT_SAMPLE_RATE = 16000
#: Separates an instruction from the text in CosyVoice2's instruct mode.
END_OF_PROMPT = "<|endofprompt|>"
_DIGIT_RUNS = re.compile(r"\d+|\D+")
_LEADING_STOPS = re.compile(r"^[\s.?!;:。？！；：、]+")
#: An ANSI/VT100 control sequence, such as a colour code.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def _speakable(text: str) -> str:
    """`text` without terminal escape sequences and control, format, surrogate, private-use and
    unassigned characters (tab and newline stay): none is ever spoken, and they derail normalisation."""
    text = _ESCAPE_SEQUENCE.sub("", text)
    return "".join(char for char in text if char in "\t\n" or unicodedata.category(char)[0] != "C")


def voice_from_spk2info(entry: dict[str, Any]) -> VoiceFeatures:
    """Read an upstream `spk2info.pt` entry (sft-only or full zero-shot speaker)."""
    embedding = entry.get("flow_embedding", entry.get("embedding"))
    if embedding is None:
        raise FrontendError("speaker entry has no embedding")
    if "flow_prompt_speech_token" not in entry:
        return VoiceFeatures.embedding_only(_numpy(embedding))
    return VoiceFeatures(
        speech_token=_numpy(entry["flow_prompt_speech_token"]).astype(np.int32).reshape(-1),
        speech_feat=_numpy(entry["prompt_speech_feat"]).astype(np.float32).reshape(-1, MEL_BINS),
        embedding=_numpy(embedding).astype(np.float32).reshape(EMBEDDING_DIM),
        prompt_text_token=_numpy(entry.get("prompt_text", torch.zeros(0))).astype(np.int32).reshape(-1))


def voice_to_spk2info(voice: VoiceFeatures) -> dict[str, torch.Tensor]:
    """The upstream `spk2info.pt` entry for a voice (usable in sft, zero-shot and instruct)."""
    tokens = torch.from_numpy(voice.speech_token).reshape(1, -1)
    feat = torch.from_numpy(voice.speech_feat).unsqueeze(0)
    text = torch.from_numpy(voice.prompt_text_token).reshape(1, -1)
    embedding = torch.from_numpy(voice.embedding).reshape(1, -1)
    return {"prompt_text": text, "prompt_text_len": torch.tensor([text.shape[1]], dtype=torch.int32),
            "llm_prompt_speech_token": tokens, "llm_prompt_speech_token_len": torch.tensor([tokens.shape[1]]),
            "flow_prompt_speech_token": tokens, "flow_prompt_speech_token_len": torch.tensor([tokens.shape[1]]),
            "prompt_speech_feat": feat, "prompt_speech_feat_len": torch.tensor([feat.shape[1]]),
            "llm_embedding": embedding, "flow_embedding": embedding, "embedding": embedding}


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class TextFrontend:
    """Normalises, splits and tokenises text with the model's Qwen tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._normalizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, allowed_special="all"))

    def segments(self, text: str) -> list[list[int]]:
        """Normalise and split `text`: one token list per segment the model speaks in one go.

        Raises FrontendError when nothing in it can be spoken (only punctuation, emoji, controls).
        """
        segments = [tokens for tokens in map(self.tokenize, self.normalize(text)) if tokens]
        if not segments:
            raise FrontendError("The text has nothing to speak: it holds no words, digits or letters.")
        return segments

    def prompt_tokens(self, prompt_text: str) -> list[int]:
        """A prompt transcript's tokens, normalised (not split) as upstream does."""
        normalized = self.normalize(prompt_text, split=False)
        return self.tokenize(normalized[0]) if normalized else []

    def _normalizer(self, lang: str) -> Any:
        with self._lock:
            if lang not in self._normalizers:
                from wetext import Normalizer

                self._normalizers[lang] = Normalizer(lang=lang, operator="tn")
            return self._normalizers[lang]

    def normalize(self, text: str, split: bool = True, streamed: bool = False) -> list[str]:
        """Upstream's `text_normalize` with wetext: normalise, then split into model-sized segments.

        Never fails on odd text: characters nobody can speak (controls, format characters) are
        dropped first, and text wetext's grammar has no path for is normalised piece by piece.
        An empty result is no segment.

        `streamed`: `text` is one piece of an utterance still being written, so a comma at its end
        is not the end of a sentence (upstream turns a final Chinese comma into a full stop).
        """
        from cosyvoice.utils.frontend_utils import (
            contains_chinese,
            is_only_punctuation,
            remove_bracket,
            replace_blank,
            replace_corner_mark,
            split_paragraph,
        )

        text = _speakable(text).strip()
        if not text:
            return []
        tokenize = partial(self.tokenizer.encode, allowed_special="all")
        if contains_chinese(text):
            text = self._normalized("zh", text)
            text = text.replace("\n", "")
            text = replace_blank(text)
            text = replace_corner_mark(text)
            text = text.replace(".", "。")
            text = text.replace(" - ", "，")
            text = remove_bracket(text)
            if not streamed:
                text = re.sub(r"[，,、]+$", "。", text)
            lang = "zh"
        else:
            text = self._normalized("en", text)
            lang = "en"
        text = text.strip()
        if split:  # sentence punctuation before the first word ends an empty sentence: upstream's splitter fails on it
            text = _LEADING_STOPS.sub("", text)
        if not text:
            return []
        if not split:
            return [text]
        segments = split_paragraph(text, tokenize, lang, token_max_n=80, token_min_n=60, merge_len=20,
                                   comma_split=False)
        return [segment for segment in segments if segment.strip() and not is_only_punctuation(segment)]

    def _normalized(self, lang: str, text: str) -> str:
        """wetext's normalisation of `text`. Its tagger finds no path through some text (`[1]`,
        `x[5kg]`) and then asserts; such text is normalised word by word, a word that still fails
        digit run by digit run, and a run that still fails is kept as it is."""
        normalizer = self._normalizer(lang)

        def attempt(piece: str) -> str | None:
            try:
                return normalizer.normalize(piece)
            except Exception:  # AssertionError on an empty tagging, RuntimeError on no path
                return None

        whole = attempt(text)
        if whole is not None:
            return whole
        words = []
        for word in text.split():
            normalized = attempt(word)
            if normalized is None:
                normalized = " ".join(attempt(run) or run for run in _DIGIT_RUNS.findall(word))
            words.append(normalized)
        return " ".join(word for word in words if word.strip())


class VoiceFeatureExtractor:
    """Computes a voice's model features from its prompt audio with the model's ONNX networks."""

    def __init__(self, model: Any):
        self.speech_tokenizer = model.speech_tokenizer
        self.campplus = model.campplus
        self.feat_extractor = model.feat_extractor
        self.sample_rate = model.sample_rate
        self.token_mel_ratio = model.token_mel_ratio
        # Upstream's mel function fills two module-level caches on its first call, one after the
        # other: a concurrent first call that finds the first filled reads the second before it is
        # (KeyError). A replica runs its calls in a thread pool, so the caches are filled here, once.
        self.speech_feat(torch.zeros(1, PROMPT_SAMPLE_RATE // 10))

    @staticmethod
    def to_prompt_rate(waveform: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mono float waveform at any rate -> [1, T] at 16 kHz, checked against the prompt limits."""
        import torchaudio.functional as AF

        audio = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if audio.ndim == 2:  # [T, channels] as soundfile returns
            audio = audio.mean(dim=1)
        audio = audio.reshape(1, -1)
        seconds = audio.shape[1] / sample_rate
        if seconds < MIN_PROMPT_SECONDS:
            raise FrontendError(f"prompt audio is {seconds:.2f} s long; at least {MIN_PROMPT_SECONDS} s is needed")
        if seconds > MAX_PROMPT_SECONDS:
            raise FrontendError(f"prompt audio is {seconds:.2f} s long; at most {MAX_PROMPT_SECONDS:.0f} s is allowed")
        if not torch.isfinite(audio).all():
            raise FrontendError("prompt audio contains non-finite samples")
        if float(audio.abs().max()) < 1e-4:
            raise FrontendError("prompt audio is silent")
        if sample_rate != PROMPT_SAMPLE_RATE:
            audio = AF.resample(audio, sample_rate, PROMPT_SAMPLE_RATE)
        return audio

    def speech_tokens(self, speech_16k: torch.Tensor) -> np.ndarray:
        import whisper

        feat = whisper.log_mel_spectrogram(speech_16k, n_mels=128)
        inputs = self.speech_tokenizer.get_inputs()
        tokens = self.speech_tokenizer.run(None, {inputs[0].name: feat.detach().cpu().numpy(),
                                                  inputs[1].name: np.array([feat.shape[2]], dtype=np.int32)})[0]
        return np.asarray(tokens, dtype=np.int32).reshape(-1)

    def speaker_embedding(self, speech_16k: torch.Tensor) -> np.ndarray:
        import torchaudio.compliance.kaldi as kaldi

        feat = kaldi.fbank(speech_16k, num_mel_bins=80, dither=0, sample_frequency=PROMPT_SAMPLE_RATE)
        feat = feat - feat.mean(dim=0, keepdim=True)
        embedding = self.campplus.run(None, {self.campplus.get_inputs()[0].name: feat.unsqueeze(0).cpu().numpy()})[0]
        return np.asarray(embedding, dtype=np.float32).reshape(EMBEDDING_DIM)

    def speech_feat(self, speech_16k: torch.Tensor) -> np.ndarray:
        import torchaudio

        resampled = torchaudio.transforms.Resample(orig_freq=PROMPT_SAMPLE_RATE, new_freq=self.sample_rate)(speech_16k)
        feat = self.feat_extractor(resampled).squeeze(0).transpose(0, 1)
        return feat.detach().cpu().numpy().astype(np.float32)

    def extract(self, speech_16k: torch.Tensor, prompt_text_token: list[int] | None = None) -> VoiceFeatures:
        """All features of one prompt, with mel frames and tokens aligned as CosyVoice2 needs."""
        feat = self.speech_feat(speech_16k)
        tokens = self.speech_tokens(speech_16k)
        # CosyVoice2 needs exactly token_mel_ratio mel frames per speech token.
        token_len = min(feat.shape[0] // self.token_mel_ratio, tokens.shape[0])
        if token_len == 0:
            raise FrontendError("prompt audio is too short to yield speech tokens")
        return VoiceFeatures(speech_token=tokens[:token_len], speech_feat=feat[:self.token_mel_ratio * token_len],
                             embedding=self.speaker_embedding(speech_16k),
                             prompt_text_token=np.asarray(prompt_text_token or [], dtype=np.int32))
