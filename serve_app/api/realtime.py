"""The speech WebSocket: text in as it is written, audio out as soon as it exists (see `ws_protocol`)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from serve_app.serving.speech_stream import PATH, SpeechStreamSession

router = APIRouter(tags=["synthesis"])


@router.websocket(PATH)
async def synthesize_stream(websocket: WebSocket) -> None:
    """Open with a config message, then send text pieces; receive JSON events and binary audio frames."""
    await SpeechStreamSession(websocket, websocket.app.state.services).run()
