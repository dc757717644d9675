"""Synchronous synthesis routes: JSON for sft/instruct, forms for the others."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.deps import Synthesis
from serve_app.api.errors import invalid_request
from serve_app.api.protocol import InstructRequest, OutputFormat, SftRequest, SynthesisResult
from serve_app.serving.synthesis import SynthesisService
from tts_core.audio import MEDIA_TYPES
from tts_core.limits import MAX_PROMPT_SECONDS, MAX_SPEED, MAX_TEXT_CHARS, MIN_SPEED
from tts_core.modes import SynthesisMode

router = APIRouter(prefix="/api/v1/synthesize", tags=["synthesis"])

STREAM_RESPONSE = {200: {"model": SynthesisResult,
                         "content": {MEDIA_TYPES[fmt]: {} for fmt in OutputFormat},
                         "description": "JSON with `audio_url`, or the audio in `format`, chunked, when `stream` is "
                                        "true."}}

Text = Annotated[str, Form(max_length=MAX_TEXT_CHARS, description="Text to speak.")]
VoiceId = Annotated[str | None, Form(description="A registered voice (instead of prompt_audio).")]
PromptAudio = Annotated[UploadFile | None,
                        File(description=f"Prompt recording, 0.5-{MAX_PROMPT_SECONDS:.0f} s (instead of voice_id).")]
Speed = Annotated[float, Form(ge=MIN_SPEED, le=MAX_SPEED, description="Speaking rate.")]
Format = Annotated[OutputFormat, Form(description="Output format.")]
Stream = Annotated[bool, Form(description="Stream the audio, chunked, as it is produced.")]
Seed = Annotated[int | None, Form(ge=0, le=2**31 - 1, description="Sampling seed for reproducible audio.")]
PromptTextForm = Annotated[str | None, Form(max_length=500, description="Transcript of prompt_audio (zero-shot).")]


async def reject_blank_form_text(request: Request) -> None:
    """Blank `text` is a 400, but FastAPI reads an empty form field as a missing one (a 422):
    look at the raw form (already parsed and cached by then) before the fields are validated."""
    text = (await request.form()).get("text")
    if isinstance(text, str) and not text.strip():
        raise invalid_request("text must not be blank")


FORM_CHECKS = [Depends(reject_blank_form_text)]


async def respond(service: SynthesisService, job, fmt: OutputFormat, stream: bool):
    if stream:
        audio = await service.stream(job, fmt.value)
        return StreamingResponse(audio, media_type=MEDIA_TYPES[fmt.value], headers=audio.headers())
    body, server_timing = await service.to_file(job, fmt.value)
    return JSONResponse(body, headers={"Server-Timing": server_timing})


@router.post("/sft", response_model=SynthesisResult, responses=STREAM_RESPONSE)
async def sft(request: SftRequest, service: Synthesis):
    job = await service.prepare(SynthesisMode.SFT, request.text, voice_id=request.voice_id, speed=request.speed,
                                fmt=request.format.value, stream=request.stream, seed=request.seed)
    return await respond(service, job, request.format, request.stream)


@router.post("/instruct", response_model=SynthesisResult, responses=STREAM_RESPONSE)
async def instruct(request: InstructRequest, service: Synthesis):
    job = await service.prepare(SynthesisMode.INSTRUCT, request.text, voice_id=request.voice_id,
                                instruct_text=request.instruct_text, speed=request.speed, fmt=request.format.value,
                                stream=request.stream, seed=request.seed)
    return await respond(service, job, request.format, request.stream)


@router.post("/zero-shot", response_model=SynthesisResult, responses=STREAM_RESPONSE, dependencies=FORM_CHECKS)
async def zero_shot(service: Synthesis, text: Text, voice_id: VoiceId = None, prompt_audio: PromptAudio = None,
                    prompt_text: PromptTextForm = None, speed: Speed = 1.0, format: Format = OutputFormat.wav,
                    stream: Stream = False, seed: Seed = None):
    job = await service.prepare(SynthesisMode.ZERO_SHOT, text, voice_id=voice_id, prompt_audio=prompt_audio,
                                prompt_text=prompt_text, speed=speed, fmt=format.value, stream=stream, seed=seed)
    return await respond(service, job, format, stream)


@router.post("/cross-lingual", response_model=SynthesisResult, responses=STREAM_RESPONSE,
             dependencies=FORM_CHECKS)
async def cross_lingual(service: Synthesis, text: Text, voice_id: VoiceId = None, prompt_audio: PromptAudio = None,
                        prompt_text: PromptTextForm = None,
                        speed: Speed = 1.0, format: Format = OutputFormat.wav, stream: Stream = False,
                        seed: Seed = None):
    job = await service.prepare(SynthesisMode.CROSS_LINGUAL, text, voice_id=voice_id, prompt_audio=prompt_audio,
                                speed=speed, fmt=format.value, stream=stream, seed=seed)
    return await respond(service, job, format, stream)
