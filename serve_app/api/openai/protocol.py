"""Schemas of the OpenAI-compatible API, as OpenAI's API reference defines them (one description per
field); `seed` is this service's extension."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tts_core.limits import MAX_INSTRUCT_CHARS, MAX_OPENAI_INPUT_CHARS

#: The model's own name, then OpenAI's speech model names, accepted as aliases of it.
MODEL_ID = "cosyvoice2"
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: The speed range OpenAI's API accepts (what the model produces is narrower).
OPENAI_MIN_SPEED, OPENAI_MAX_SPEED = 0.25, 4.0


class ResponseFormat(StrEnum):
    mp3 = "mp3"
    opus = "opus"
    aac = "aac"
    flac = "flac"
    wav = "wav"
    pcm = "pcm"


class StreamFormat(StrEnum):
    audio = "audio"
    sse = "sse"


class VoiceRef(BaseModel):
    """A voice given by id, as OpenAI's custom voices are."""

    id: str = Field(description="A voice id (pretrained or registered) or an OpenAI voice name.")


class SpeechRequest(BaseModel):
    """`POST /v1/audio/speech`. Unknown fields are ignored, as clients send provider-specific extras."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description=f"`{MODEL_ID}`, or one of OpenAI's names for it: {', '.join(MODEL_ALIASES)}.")
    input: str = Field(max_length=MAX_OPENAI_INPUT_CHARS,
                       description=f"The text to speak, at most {MAX_OPENAI_INPUT_CHARS} characters, not blank.")
    voice: str | VoiceRef = Field(
        description="A pretrained or registered voice id, or an OpenAI voice name (`alloy`, `echo`, `nova`, ...) "
                    "mapped to a voice by the `openai_voices` setting; also as `{\"id\": ...}`.")
    instructions: str | None = Field(
        None, max_length=MAX_INSTRUCT_CHARS,
        description="How to speak (tone, emotion, pace): CosyVoice2's instruct mode. Without it the voice speaks "
                    "plainly (pretrained voices: sft mode; registered voices: zero-shot from their sample).")
    response_format: ResponseFormat = Field(
        ResponseFormat.mp3, description="mp3, opus (in Ogg), aac (ADTS), flac, wav, or pcm (raw 24 kHz 16-bit "
                                        "little-endian mono).")
    speed: float = Field(1.0, ge=OPENAI_MIN_SPEED, le=OPENAI_MAX_SPEED,
                         description="Speaking rate; OpenAI's range is 0.25-4.0, the model produces 0.5-2.0 and "
                                     "answers 400 outside it.")
    stream_format: StreamFormat = Field(
        StreamFormat.audio, description="`audio`: the encoded audio, chunked as it is made. `sse`: server-sent "
                                        "events, `speech.audio.delta` with base64 audio, then `speech.audio.done`.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Extension: sampling seed; the same seed and inputs give the same audio.")


class Model(BaseModel):
    id: str = Field(description="Model name to use in requests.")
    object: Literal["model"] = Field("model", description="Always `model`.")
    created: int = Field(description="Unix time the service started.")
    owned_by: str = Field(description="Who serves the model.")


class ModelList(BaseModel):
    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[Model] = Field(description="The model, under its own name and OpenAI's aliases.")


class Usage(BaseModel):
    input_tokens: int = Field(description="Text tokens read.")
    output_tokens: int = Field(description="Speech tokens generated (25 per second of audio).")
    total_tokens: int = Field(description="Both together.")


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = Field("speech.audio.delta", description="Event type.")
    audio: str = Field(description="The next bytes of the encoded audio, base64.")


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = Field("speech.audio.done", description="Event type: the audio is complete.")
    usage: Usage = Field(description="Tokens of this request.")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong.")
    type: str = Field(description="`invalid_request_error` (4xx) or `server_error` (5xx).")
    param: str | None = Field(None, description="The request field at fault, if one is.")
    code: str | None = Field(None, description="A machine-readable code, if there is one.")


class ErrorResponse(BaseModel):
    error: ErrorDetail = Field(description="The error.")
