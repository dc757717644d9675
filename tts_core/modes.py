"""CosyVoice2's four inference modes, defined once: their names, and what each gives the LLM and
the flow decoder (upstream's `frontend_sft` / `frontend_zero_shot` / `frontend_cross_lingual` /
`frontend_instruct2`, applied to a voice's precomputed features)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tts_core.wire import FlowPrompt, VoiceFeatures


class SynthesisMode(StrEnum):
    SFT = "sft"
    ZERO_SHOT = "zero_shot"
    CROSS_LINGUAL = "cross_lingual"
    INSTRUCT = "instruct"

    @property
    def label(self) -> str:
        """How messages name the mode."""
        return {"sft": "SFT", "zero_shot": "Zero-shot", "cross_lingual": "Cross-lingual",
                "instruct": "Instruct"}[self.value]

    @property
    def path(self) -> str:
        """The mode's segment in route paths (`zero-shot`)."""
        return self.value.replace("_", "-")


#: Voice types are the mode a voice is registered for (any voice works in every mode).
VOICE_TYPES = tuple(mode.value for mode in SynthesisMode)


@dataclass
class ModeInputs:
    llm_prompt_text: list[int]
    llm_prompt_speech: list[int]
    flow_prompt: FlowPrompt


def mode_inputs(mode: SynthesisMode, voice: VoiceFeatures, instruction_tokens: list[int] | None = None) -> ModeInputs:
    """The prompts of one mode.

    - sft: the speaker embedding alone, no prompt.
    - zero-shot: prompt transcript + prompt speech tokens to the LLM, prompt mel and tokens to the
      flow. A voice registered without a transcript has nothing to align, so it is spoken as in
      cross-lingual mode.
    - cross-lingual: as zero-shot without anything in the LLM prompt (the text keeps its language).
    - instruct (CosyVoice2's instruct2): `instruction<|endofprompt|>` as the LLM's prompt text,
      the voice's prompt speech to the flow only.
    """
    from tts_core.wire import FlowPrompt, VoiceFeatures

    full = FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding)
    if mode is SynthesisMode.SFT:
        empty = VoiceFeatures.embedding_only(voice.embedding)
        return ModeInputs([], [], FlowPrompt(empty.speech_token, empty.speech_feat, empty.embedding))
    if mode is SynthesisMode.ZERO_SHOT and voice.prompt_text_token.size:
        return ModeInputs(np.asarray(voice.prompt_text_token).tolist(), np.asarray(voice.speech_token).tolist(), full)
    if mode is SynthesisMode.INSTRUCT:
        if not instruction_tokens:
            raise ValueError("instruct mode needs instruction tokens")
        return ModeInputs(list(instruction_tokens), [], full)
    return ModeInputs([], [], full)
