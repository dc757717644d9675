"""Request and response schemas of the API, one description per field."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, create_model

from tts_core.limits import MAX_INSTRUCT_CHARS, MAX_SPEED, MAX_TEXT_CHARS, MIN_SPEED
from tts_core.modes import SynthesisMode
from tts_core.tasks import TaskState

#: A voice's type is the mode it is registered for.
VoiceType = SynthesisMode


class AudioFormat(StrEnum):
    wav = "wav"
    mp3 = "mp3"
    flac = "flac"


class OutputFormat(StrEnum):
    """What synthesis produces, streamed or as a file (`pcm`: raw 16-bit little-endian mono samples)."""

    wav = "wav"
    mp3 = "mp3"
    flac = "flac"
    opus = "opus"
    aac = "aac"
    pcm = "pcm"


# --- system -----------------------------------------------------------------------------------

class RootInfo(BaseModel):
    message: str = Field(description="What this service is.")
    version: str = Field(description="Service version.")
    docs: str = Field(description="Path of the interactive OpenAPI documentation.")


class Health(BaseModel):
    status: str = Field(description="`healthy` once every stage is loaded, else `unavailable`.")
    voice_manager_ready: bool = Field(description="The voice registry and the voice front end answer.")
    async_synthesis_ready: bool = Field(description="Asynchronous synthesis tasks can be accepted.")
    model: str | None = Field(None, description="`cosyvoice2-twin` (random weights) or the model directory's name.")
    precision: str | None = Field(None, description="The dtype the LLM and flow decoder run in (fp32, bf16, fp16): "
                                                    "`dtype: auto` picks bf16 where the device runs it natively.")
    stages: dict[str, bool] = Field(default_factory=dict, description="Readiness of each pipeline stage.")


# --- voices -----------------------------------------------------------------------------------

class Voice(BaseModel):
    voice_id: str = Field(description="Unique, immutable id (letters, digits, `_`, `-`; 1-64 chars).")
    name: str = Field(description="Display name, 1-100 chars.")
    description: str | None = Field(None, description="Free text, at most 500 chars.")
    voice_type: VoiceType = Field(description="Intended use; any registered voice works in every mode.")
    language: str | None = Field(None, description="Language tag such as `en`, `zh`, `ja`, `ko`, `yue`.")
    prompt_text: str | None = Field(None, description="Transcript of the voice sample.")
    audio_format: AudioFormat = Field(description="Format label given at registration.")
    created_at: str = Field(description="Registration time, ISO-8601 UTC.")
    updated_at: str = Field(description="Last metadata change, ISO-8601 UTC.")
    file_size: int = Field(description="Bytes of the uploaded sample.")
    duration: float = Field(description="Seconds of the uploaded sample.")
    sample_rate: int = Field(description="Sample rate of the uploaded sample, Hz.")
    is_active: bool = Field(True, description="Always true in v1 (reserved).")


class VoiceList(BaseModel):
    voices: list[Voice] = Field(description="This page of matching voices, oldest first.")
    total: int = Field(description="Matching voices before paging.")
    page: int = Field(description="Page number, from 1.")
    page_size: int = Field(description="Voices per page.")


class VoiceUpdate(BaseModel):
    """Metadata that may change after registration; any other key is refused."""

    model_config = ConfigDict(extra="forbid")

    # `str` with a default that is never validated: leaving `name` out keeps it, an explicit null is a 422.
    name: str = Field(None, min_length=1, max_length=100, description="New display name.")
    description: str | None = Field(None, max_length=500, description="New description (null clears it).")
    language: str | None = Field(None, max_length=16, description="New language tag (null clears it).")


class VoiceDeleted(BaseModel):
    message: str = Field(description="Confirmation.")
    voice_id: str = Field(description="The deleted id, free again.")


VoiceTypeCounts = create_model("VoiceTypeCounts", **{
    mode.value: (int, Field(0, description=f"Voices registered as {mode.value}.")) for mode in SynthesisMode})


class VoiceStats(BaseModel):
    total_voices: int = Field(description="Registered voices.")
    active_voices: int = Field(description="Active registered voices (all in v1).")
    voice_types: VoiceTypeCounts = Field(description="Registered voices per voice type.")
    languages: dict[str, int] = Field(description="Registered voices per language tag.")
    total_duration: float = Field(description="Seconds of all samples together.")
    total_size: int = Field(description="Bytes of all samples together.")


class PretrainedVoices(BaseModel):
    pretrained_voices: list[str] = Field(description="The model's built-in speaker ids.")
    total: int = Field(description="How many there are.")


# --- synthesis --------------------------------------------------------------------------------

class SynthesisOptions(BaseModel):
    text: str = Field(max_length=MAX_TEXT_CHARS,
                      description=f"Text to speak (at most {MAX_TEXT_CHARS} chars, not blank).")
    # Strict numbers: `true` or `"1.5"` is a wrong type (422), not a number.
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED, strict=True,
                         description=f"Speaking rate, {MIN_SPEED}-{MAX_SPEED}.")
    format: OutputFormat = Field(OutputFormat.wav, description="Output format, streamed or as a file: wav, mp3, "
                                                               "flac, opus (Ogg), aac (ADTS) or pcm (raw 16-bit).")
    stream: bool = Field(False, description="Stream the audio in `format`, chunked as it is produced, instead of "
                                            "JSON.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, strict=True,
                             description="Sampling seed; the same seed and inputs give the same audio.")


class SftRequest(SynthesisOptions):
    voice_id: str = Field(description="A pretrained or registered voice.")


class InstructRequest(SynthesisOptions):
    voice_id: str = Field(description="A pretrained or registered voice.")
    instruct_text: str = Field(min_length=1, max_length=MAX_INSTRUCT_CHARS,
                               description="How to speak, e.g. a tone or emotion.")


class SynthesisResult(BaseModel):
    success: bool = Field(True, description="Always true: failures are error responses.")
    message: str = Field(description="Confirmation.")
    audio_url: str = Field(description="Where to download the audio: `/api/v1/audio/<file>`.")
    duration: float = Field(description="Seconds of audio in the file.")
    format: OutputFormat = Field(description="Format of the file.")
    synthesis_time: float = Field(description="Seconds the synthesis took.")
    sample_rate: int = Field(description="Sample rate of the file, Hz.")


# --- async tasks ------------------------------------------------------------------------------

class TaskSubmitted(BaseModel):
    task_id: str = Field(description="Opaque, URL-safe id of the task.")
    status: str = Field("submitted", description="Always `submitted` here; then see the status URL.")
    message: str = Field(description="Confirmation naming the mode.")
    check_status_url: str = Field(description="Where to poll the task's state.")
    result_url: str = Field(description="Where to fetch the result once completed.")


class Task(BaseModel):
    task_id: str = Field(description="Id of the task.")
    mode: VoiceType = Field(description="Synthesis mode.")
    status: TaskState = Field(description="pending -> processing -> completed | failed; or cancelled.")
    progress: float = Field(description="0.0-1.0, never decreasing; 1.0 exactly when completed.")
    created_at: str = Field(description="Submission time, ISO-8601 UTC.")
    started_at: str | None = Field(None, description="When synthesis began.")
    completed_at: str | None = Field(None, description="When the task reached a final state.")
    error: str | None = Field(None, description="Why the task failed or was cancelled.")
    result_available: bool = Field(description="Whether the result can be fetched.")
    result_url: str | None = Field(None, description="Where to fetch the result (completed tasks).")


class TaskList(BaseModel):
    tasks: list[Task] = Field(description="Matching tasks, newest first, at most `limit`.")
    total: int = Field(description="Matching tasks before `limit`.")


class TaskCancelled(BaseModel):
    task_id: str = Field(description="Id of the task.")
    status: str = Field("cancelled", description="Always `cancelled`.")
    message: str = Field(description="Confirmation.")


class TaskResult(SynthesisResult):
    task_id: str = Field(description="Id of the task.")
