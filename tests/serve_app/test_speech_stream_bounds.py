"""The speech WebSocket's session on stand-ins (no Ray, no network): a client that stops reading does
not make the server synthesize and hold audio without bound, and every frame sent is acknowledged
to the LLM sequence (which runs at most `AHEAD_TOKENS` past the acknowledgements:
tests/deployments/test_bistream.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from serve_app.serving import speech_stream
from serve_app.serving.speech_stream import SpeechStreamSession
from tts_core.wire import BistreamInput, SynthesisChunk, VoiceFeatures

RATE = 24000
CHUNK_S = 0.5
TOKENS_PER_CHUNK = 12


class _Remote:
    def __init__(self, function: Any):
        self.remote = function


class EndlessSynthesis:
    """A bistream synthesis that yields 0.5 s chunks as fast as they are asked for, for ever."""

    def __init__(self, produced: list[int]):
        self.produced, self.cancelled = produced, False

    def __aiter__(self) -> EndlessSynthesis:
        return self

    async def __anext__(self) -> SynthesisChunk:
        await asyncio.sleep(0)
        if self.cancelled:
            raise StopAsyncIteration
        self.produced.append(len(self.produced))
        return SynthesisChunk(pcm=np.zeros(int(CHUNK_S * RATE), np.float32), segment=0, segments=1,
                              tokens=len(self.produced) * TOKENS_PER_CHUNK, text_tokens=1, segment_done=False)

    def cancel(self) -> None:
        self.cancelled = True


class StandInServices:
    def __init__(self) -> None:
        self.produced: list[int] = []
        self.acked: list[int] = []

        async def features(voice_id: str) -> VoiceFeatures:
            return VoiceFeatures.embedding_only(np.zeros(192, dtype=np.float32))

        async def tokens(piece: str, space_before: bool) -> list[int]:
            return [1] * len(piece.split())

        async def put(key: str, message: BistreamInput) -> None:
            if message.acked_tokens is not None:
                self.acked.append(message.acked_tokens)

        self.voices = SimpleNamespace(features=features)
        self.frontend = SimpleNamespace(streamed_text_tokens=_Remote(tokens))
        self.inbox = SimpleNamespace(put=_Remote(put), discard=_Remote(lambda key: None))
        self.synthesis = SimpleNamespace(sample_rate=RATE)
        self.pipeline = SimpleNamespace(options=lambda **_: SimpleNamespace(
            synthesize_bistream=_Remote(lambda job: EndlessSynthesis(self.produced))))


class StandInSocket:
    """A client that sends a config and text, then reads nothing: the first `capacity` sends go
    through (into buffers), the ones after wait for ever (None: every send goes through)."""

    def __init__(self, capacity: int | None):
        self.scope = {"type": "websocket", "path": speech_stream.PATH, "headers": []}
        self.incoming: asyncio.Queue = asyncio.Queue()
        for message in ({"type": "config", "voice_id": "v", "seed": 1},
                        {"type": "text", "text": "A text that is long enough to keep speaking "}):
            self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})
        self.capacity, self.sends, self.frames = capacity, 0, 0

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict:
        return await self.incoming.get()

    async def send_text(self, text: str) -> None:
        await self._send()

    async def send_bytes(self, data: bytes) -> None:
        await self._send()
        self.frames += 1

    async def _send(self) -> None:
        if self.capacity is not None and self.sends >= self.capacity:
            await asyncio.Event().wait()
        self.sends += 1

    async def close(self, code: int = 1000) -> None:
        pass


async def run_for(socket: StandInSocket, services: StandInServices, seconds: float) -> None:
    session = asyncio.create_task(SpeechStreamSession(socket, services).run())
    await asyncio.sleep(seconds)
    session.cancel()
    with pytest.raises(asyncio.CancelledError):
        await session


def test_a_client_whose_buffers_are_full_stops_the_synthesis() -> None:
    services, socket = StandInServices(), StandInSocket(capacity=6)
    asyncio.run(run_for(socket, services, 1.0))
    # The started event and a few frames went out; after that the producer waits for the sender:
    # what it made is what was sent, what the sender holds, and the utterance's small queue.
    assert socket.frames >= 1
    assert len(services.produced) <= socket.frames + 1 + 4 + 1
    assert services.acked == [TOKENS_PER_CHUNK * (index + 1) for index in range(socket.frames)]


def test_a_client_that_does_not_read_gets_audio_at_most_the_lead_ahead_of_real_time(monkeypatch) -> None:
    # Sends that always go through: a proxy buffering what the client does not read.
    monkeypatch.setattr(speech_stream, "AUDIO_LEAD_S", 2.0)
    services, socket = StandInServices(), StandInSocket(capacity=None)
    asyncio.run(run_for(socket, services, 1.0))
    sent_seconds = socket.frames * CHUNK_S
    assert 2.0 <= sent_seconds <= 2.0 + 1.0 + 2 * CHUNK_S  # the lead, the second of playback, one chunk
    assert len(services.produced) <= socket.frames + 1 + 4 + 1
    assert len(services.acked) == socket.frames
