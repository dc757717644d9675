"""System routes: service info and health."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve_app import __version__
from serve_app.api.deps import State
from serve_app.api.protocol import Health, RootInfo

router = APIRouter(tags=["system"])


@router.get("/", response_model=RootInfo)
async def root() -> RootInfo:
    return RootInfo(message="CosyVoice2 TTS API", version=__version__, docs="/docs")


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(state: State) -> JSONResponse:
    report = await state.health()
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "healthy" else 503)
