"""Asynchronous synthesis routes: submit, status, result, cancel, list.

Submissions take the same bodies and pass the same checks as their sync twins, before a task
is accepted; `stream` is ignored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serve_app.api.deps import Synthesis, Tasks
from serve_app.api.protocol import (
    InstructRequest,
    OutputFormat,
    SftRequest,
    Task,
    TaskCancelled,
    TaskList,
    TaskResult,
    TaskState,
    TaskSubmitted,
)
from serve_app.api.synthesis import (
    FORM_CHECKS,
    Format,
    PromptAudio,
    PromptTextForm,
    Seed,
    Speed,
    Stream,
    Text,
    VoiceId,
)
from tts_core.modes import SynthesisMode

router = APIRouter(prefix="/api/v1/async", tags=["async tasks"])
ACCEPTED = {"status_code": 202, "response_model": TaskSubmitted}


@router.post("/synthesize/sft", **ACCEPTED)
async def submit_sft(request: SftRequest, synthesis: Synthesis, tasks: Tasks) -> dict:
    job = await synthesis.prepare(SynthesisMode.SFT, request.text, voice_id=request.voice_id, speed=request.speed,
                                  fmt=request.format.value, seed=request.seed)
    return await tasks.submit(job, request.format.value)


@router.post("/synthesize/instruct", **ACCEPTED)
async def submit_instruct(request: InstructRequest, synthesis: Synthesis, tasks: Tasks) -> dict:
    job = await synthesis.prepare(SynthesisMode.INSTRUCT, request.text, voice_id=request.voice_id,
                                  instruct_text=request.instruct_text, speed=request.speed,
                                  fmt=request.format.value, seed=request.seed)
    return await tasks.submit(job, request.format.value)


@router.post("/synthesize/zero-shot", **ACCEPTED, dependencies=FORM_CHECKS)
async def submit_zero_shot(synthesis: Synthesis, tasks: Tasks, text: Text, voice_id: VoiceId = None,
                           prompt_audio: PromptAudio = None, prompt_text: PromptTextForm = None, speed: Speed = 1.0,
                           format: Format = OutputFormat.wav, stream: Stream = False, seed: Seed = None) -> dict:
    job = await synthesis.prepare(SynthesisMode.ZERO_SHOT, text, voice_id=voice_id, prompt_audio=prompt_audio,
                                  prompt_text=prompt_text, speed=speed, fmt=format.value, seed=seed)
    return await tasks.submit(job, format.value)


@router.post("/synthesize/cross-lingual", **ACCEPTED, dependencies=FORM_CHECKS)
async def submit_cross_lingual(synthesis: Synthesis, tasks: Tasks, text: Text, voice_id: VoiceId = None,
                               prompt_audio: PromptAudio = None, prompt_text: PromptTextForm = None,
                               speed: Speed = 1.0, format: Format = OutputFormat.wav, stream: Stream = False,
                               seed: Seed = None) -> dict:
    job = await synthesis.prepare(SynthesisMode.CROSS_LINGUAL, text, voice_id=voice_id, prompt_audio=prompt_audio,
                                  speed=speed, fmt=format.value, seed=seed)
    return await tasks.submit(job, format.value)


@router.get("/tasks/{task_id}/status", response_model=Task)
async def task_status(task_id: str, tasks: Tasks) -> dict:
    return await tasks.status(task_id)


@router.get("/tasks/{task_id}/result", response_model=TaskResult,
            responses={202: {"model": Task, "description": "Not finished yet: the task's state."}})
async def task_result(task_id: str, tasks: Tasks):
    return await tasks.result(task_id)


@router.delete("/tasks/{task_id}", response_model=TaskCancelled)
async def cancel_task(task_id: str, tasks: Tasks) -> dict:
    return await tasks.cancel(task_id)


@router.get("/tasks", response_model=TaskList)
@router.get("/tasks/", response_model=TaskList, include_in_schema=False)
async def list_tasks(tasks: Tasks, status: Annotated[TaskState | None, Query(description="Only this state.")] = None,
                     limit: Annotated[int, Query(ge=1, le=500, description="At most this many tasks.")] = 50) -> dict:
    return await tasks.list(status.value if status else None, limit)
