"""Values that travel between processes: requests, voices and stream state, as numpy and plain
lists (never torch tensors), so any process can receive them without loading the model stack."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tts_core.modes import SynthesisMode

#: Dimensions CosyVoice2 fixes: speaker embedding (campplus) and mel bins.
EMBEDDING_DIM = 192
MEL_BINS = 80


class FrontendError(ValueError):
    """Input the front end cannot turn into model inputs (the API answers 400)."""


@dataclass
class VoiceFeatures:
    """A voice's model features, computed once from its prompt audio."""

    #: Speech tokens of the prompt audio (25 per second), int32.
    speech_token: np.ndarray
    #: 24 kHz log-mel of the prompt audio, [2 * len(speech_token), 80], float32.
    speech_feat: np.ndarray
    #: Speaker embedding (campplus), [192], float32.
    embedding: np.ndarray
    #: Tokens of the prompt transcript, normalised as upstream does; empty without a transcript.
    prompt_text_token: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    @classmethod
    def embedding_only(cls, embedding: np.ndarray) -> VoiceFeatures:
        """A speaker known only by its embedding (CosyVoice1-style `spk2info` entries)."""
        return cls(speech_token=np.zeros(0, dtype=np.int32), speech_feat=np.zeros((0, MEL_BINS), dtype=np.float32),
                   embedding=np.asarray(embedding, dtype=np.float32).reshape(EMBEDDING_DIM))


@dataclass
class SpeechTokenRequest:
    """What the LLM needs for one text segment (all token ids, plain lists)."""

    #: Qwen tokens of the text to speak.
    text_token: list[int]
    #: Qwen tokens of the prompt transcript (zero-shot) or `instruction<|endofprompt|>` (instruct).
    prompt_text_token: list[int] = field(default_factory=list)
    #: Speech tokens of the prompt audio (zero-shot only).
    prompt_speech_token: list[int] = field(default_factory=list)
    #: Seed of this segment's sampling; the same seed gives the same tokens.
    seed: int = 0
    sampling: int = 25
    max_token_text_ratio: float = 20.0
    min_token_text_ratio: float = 2.0


@dataclass
class BistreamRequest:
    """What the LLM needs to start a sequence whose text arrives while it is being decoded."""

    #: Names the sequence's inbox, through which its text and its consumer's progress arrive.
    key: str
    #: Qwen tokens of the prompt transcript (zero-shot) or `instruction<|endofprompt|>` (instruct).
    prompt_text_token: list[int] = field(default_factory=list)
    #: Speech tokens of the prompt audio (zero-shot only).
    prompt_speech_token: list[int] = field(default_factory=list)
    #: Seed of the sequence's sampling; the same seed and text give the same tokens.
    seed: int = 0
    sampling: int = 25
    #: Runaway guard: at most this many speech tokens per text token read.
    max_token_text_ratio: float = 20.0
    #: Speech tokens the sequence may run ahead of what its consumer acknowledged; None: no limit.
    ahead_tokens: int | None = None


@dataclass
class BistreamInput:
    """One message to a live bistream sequence: more text, the end of the text, or flow control."""

    text_token: list[int] = field(default_factory=list)
    #: No more text comes: the sequence speaks what it has and finishes.
    text_end: bool = False
    #: The consumer has taken the audio of this many speech tokens.
    acked_tokens: int | None = None


@dataclass
class BistreamTokens:
    """Speech tokens of a bistream sequence, as they are sampled."""

    tokens: list[int]
    #: Text tokens the model had been fed when it sampled the last of them.
    text_tokens_fed: int


@dataclass
class BistreamJob:
    """One utterance whose text arrives while it is spoken (one LLM bistream sequence)."""

    #: The LLM sequence's inbox key (text and acknowledgements are sent there).
    key: str
    mode: SynthesisMode
    voice: VoiceFeatures
    instruct_text: str | None = None
    seed: int = 0
    #: Index of this utterance among those of its stream (seeds the sampling and the vocoder).
    segment: int = 0
    #: See `BistreamRequest.ahead_tokens`.
    ahead_tokens: int | None = None


@dataclass
class FlowPrompt:
    """The voice side of the flow decoder's input."""

    #: Prompt speech tokens, int32 [N] (may be empty).
    speech_token: np.ndarray
    #: Prompt mel, float32 [2N, 80] (may be empty).
    speech_feat: np.ndarray
    #: Speaker embedding, float32 [192].
    embedding: np.ndarray


@dataclass
class VocoderCache:
    """HiFT state carried from one streamed chunk to the next."""

    mel: np.ndarray  # [80, MEL_CACHE_LEN]
    source: np.ndarray  # [1, SOURCE_CACHE_LEN]
    speech: np.ndarray  # [SOURCE_CACHE_LEN]


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
    #: The text's segments as token ids, when the front end already split it (the API does, to
    #: refuse text with nothing to speak before it accepts a request).
    text_segments: list[list[int]] | None = None
    #: Seconds the ingress spent per stage before synthesis (`tts_core.timing.STAGES`).
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class SynthesisChunk:
    """A piece of the output waveform and where the job stands."""

    pcm: np.ndarray  # float32 mono at the model's sample rate
    segment: int
    segments: int
    tokens: int  # speech tokens of this segment decoded so far
    text_tokens: int  # text tokens of this segment (streamed-in text: those the model has been fed so far)
    segment_done: bool
    #: Seconds the pipeline waited per stage since the previous chunk (`tts_core.timing.STAGES`).
    stage_seconds: dict[str, float] = field(default_factory=dict)
