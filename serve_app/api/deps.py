"""Dependencies of the routes, as `Annotated` aliases: the serving objects of this replica."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serve_app.serving.state import ServiceState
from serve_app.serving.synthesis import SynthesisService
from serve_app.serving.tasks import TaskService
from serve_app.serving.voices import VoiceService


def get_state(request: Request) -> ServiceState:
    return request.app.state.services


def get_voices(request: Request) -> VoiceService:
    return request.app.state.services.voices


def get_synthesis(request: Request) -> SynthesisService:
    return request.app.state.services.synthesis


def get_tasks(request: Request) -> TaskService:
    return request.app.state.services.tasks


State = Annotated[ServiceState, Depends(get_state)]
Voices = Annotated[VoiceService, Depends(get_voices)]
Synthesis = Annotated[SynthesisService, Depends(get_synthesis)]
Tasks = Annotated[TaskService, Depends(get_tasks)]
