"""Messages of the speech WebSocket (`/api/v1/ws/synthesize`), one description per field.

The client opens with a `StreamConfig`, then sends text as it is written (`TextMessage`), `flush`
to have what it sent so far spoken now, `end` once an utterance's text is complete, `cancel` to
stop one at once, and `close` to end the session once everything is spoken. Utterances are
named by `context_id` and spoken in the order they were started. The server answers with JSON
events (`started`, `chunk`, `done`, `error`) and binary frames of audio: each `chunk` event is
followed by the frame it describes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tts_core.limits import MAX_INSTRUCT_CHARS, MAX_TEXT_CHARS
from tts_core.modes import SynthesisMode
from tts_core.pcm_stream import STREAM_FORMATS, STREAM_SAMPLE_RATES

#: The context an utterance belongs to when a message names none.
DEFAULT_CONTEXT = "default"
ContextId = Field(DEFAULT_CONTEXT, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                  description="Names the utterance; utterances are spoken in the order they were started.")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamConfig(_Message):
    """The first message: how every utterance of this socket is spoken."""

    type: Literal["config"] = Field(description="Always `config`.")
    voice_id: str = Field(min_length=1, description="A pretrained or registered voice.")
    mode: SynthesisMode = Field(SynthesisMode.SFT, description="sft, zero_shot, cross_lingual or instruct.")
    instruct_text: str | None = Field(None, min_length=1, max_length=MAX_INSTRUCT_CHARS,
                                      description="How to speak (instruct mode only, where it is required).")
    format: Literal[STREAM_FORMATS] = Field(
        "pcm", description="Audio frames: `pcm` 16-bit little-endian mono, `mulaw` G.711 mu-law, `wav` the pcm "
                           "stream of each utterance behind a WAV header of unknown length; `mp3`, `opus`, `aac`, "
                           "`flac` as on the HTTP routes (each utterance one stream of the format).")
    sample_rate: int | None = Field(None, description=f"One of {', '.join(map(str, STREAM_SAMPLE_RATES))} Hz; "
                                                      "default 24000 (8000 for mulaw).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Sampling seed; the same seed and text give the same audio.")

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        if self.sample_rate is None:
            self.sample_rate = 8000 if self.format == "mulaw" else STREAM_SAMPLE_RATES[0]
        if self.sample_rate not in STREAM_SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {', '.join(map(str, STREAM_SAMPLE_RATES))}")
        if (self.mode is SynthesisMode.INSTRUCT) != (self.instruct_text is not None):
            raise ValueError("instruct_text is required in instruct mode and only there")
        return self


class TextMessage(_Message):
    """More text of an utterance, as it is written; the first text of a new `context_id` starts one."""

    type: Literal["text"] = Field(description="Always `text`.")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The next piece of text, spaces included.")
    context_id: str = ContextId


class ContextMessage(_Message):
    """`flush`: speak what was sent so far now (later text continues the utterance as a new phrase);
    `end`: the utterance's text is complete; `cancel`: stop the utterance and its audio at once."""

    type: Literal["flush", "end", "cancel"] = Field(description="What to do with the utterance.")
    context_id: str = ContextId


class CloseMessage(_Message):
    """End the session once every utterance started so far has been spoken (close code 1000)."""

    type: Literal["close"] = Field(description="Always `close`.")


# --- server events ------------------------------------------------------------------------------

class StartedEvent(BaseModel):
    type: Literal["started"] = "started"
    context_id: str = Field(description="The utterance that started.")
    format: str = Field(description="Format of its audio frames.")
    sample_rate: int = Field(description="Sample rate of its audio, Hz.")
    seed: int = Field(description="Seed of its sampling.")


class ChunkEvent(BaseModel):
    type: Literal["chunk"] = "chunk"
    context_id: str = Field(description="The utterance the next binary frame belongs to.")
    index: int = Field(description="Position of the frame in the utterance, from 0.")
    bytes: int = Field(description="Length of the binary frame that follows.")
    duration: float = Field(description="Seconds of audio in the frame.")
    text_start: int = Field(description="Start (character offset in the utterance's text) of what the frame speaks.")
    text_end: int = Field(description="End of what the frame speaks: the text the model had read when it produced "
                                      "it, so captions lead the voice slightly; the last frame ends at the end.")
    text: str = Field(description="That text.")


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    context_id: str = Field(description="The utterance that is over: no more frames of it follow.")
    cancelled: bool = Field(description="It was cancelled before all of it was spoken.")
    duration: float = Field(description="Seconds of audio sent for it.")
    chunks: int = Field(description="Audio frames sent for it.")


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    error: str = Field(description="Error code, as in the REST API's error shape.")
    message: str = Field(description="What went wrong.")
    details: dict = Field(description="`path`, `request_id` (the socket's, as in the server's log), and the "
                                      "`context_id` concerned if any.")
