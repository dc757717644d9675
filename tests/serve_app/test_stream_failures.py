"""A streamed synthesis that fails, in process with a fake pipeline: before any audio it is an
ordinary error response; after audio was sent the stream never ends cleanly, so a client can tell
the body is incomplete."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError, RayTaskError

from deployments.failures import StageUnavailableError
from serve_app.api.errors import install_error_handlers
from serve_app.api.protocol import AudioFormat
from serve_app.api.synthesis import respond
from serve_app.serving.synthesis import SynthesisService
from tests.leaks import assert_one_sentence
from tts_core.modes import SynthesisMode
from tts_core.wire import FrontendError, SynthesisChunk, SynthesisJob, VoiceFeatures


class FakePipeline:
    """`synthesize` streams `chunks` PCM chunks, then fails with `error` if there is one."""

    def __init__(self, chunks: int, error: BaseException | None):
        self.chunks, self.error = chunks, error

    def options(self, **_):
        return self

    @property
    def synthesize(self):
        return self

    async def _stream(self):
        for index in range(self.chunks):
            yield SynthesisChunk(pcm=np.full(480, 0.1, np.float32), segment=0, segments=1, tokens=index,
                                 text_tokens=4, segment_done=False)
        if self.error is not None:
            raise self.error

    def remote(self, job):
        return self._stream()


def remote_error(cause: BaseException) -> BaseException:
    return RayTaskError("synthesize", "Traceback (most recent call last): ...", cause).as_instanceof_cause()


def call_stream(pipeline: FakePipeline) -> tuple[list[dict], BaseException | None]:
    """Every ASGI message the app sends for a streamed request, and what the app raised."""
    service = SynthesisService(pipeline, frontend=None, voices=None, outputs=None, sample_rate=24000)
    job = SynthesisJob(mode=SynthesisMode.SFT, text="Hello.", voice=VoiceFeatures.embedding_only(np.zeros(192)),
                       stream=True)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/stream")
    async def stream():
        return await respond(service, job, AudioFormat.wav, stream=True)

    messages: list[dict] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/stream", "raw_path": b"/stream", "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def receive() -> dict:
        await asyncio.sleep(3600)  # no body; the client never hangs up
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    async def run() -> BaseException | None:
        try:
            await app(scope, receive, send)
        except Exception as exc:
            return exc
        return None

    return messages, asyncio.run(run())


@pytest.mark.parametrize(("error", "status", "code"), [
    (remote_error(FrontendError("The text has nothing to speak.")), 400, "invalid_request"),
    (remote_error(StageUnavailableError("llm", 30.0)), 503, "service_unavailable"),
    (ActorDiedError(), 503, "service_unavailable"),
    (remote_error(RuntimeError("boom\n  at /srv/app/x.py line 3")), 500, "synthesis_error"),
], ids=["bad-text", "stage-gone", "pipeline-gone", "bug"])
def test_a_failure_before_any_audio_is_an_error_response(error, status, code) -> None:
    messages, _ = call_stream(FakePipeline(chunks=0, error=error))
    start, *bodies = messages
    assert start["status"] == status
    body = json.loads(b"".join(message.get("body", b"") for message in bodies))
    assert body["error"] == code and body["details"]["request_id"]
    assert_one_sentence(body["message"])
    if status == 503:
        assert (b"retry-after", b"5") in start["headers"]


def test_a_failure_after_audio_never_ends_the_stream_cleanly() -> None:
    messages, raised = call_stream(FakePipeline(chunks=3, error=remote_error(StageUnavailableError("flow", 30.0))))
    assert messages[0]["status"] == 200
    bodies = [message for message in messages if message["type"] == "http.response.body"]
    assert len(bodies) >= 4  # the header and the three chunks went out
    assert all(message.get("more_body") for message in bodies)  # and no final, empty "the end" message
    assert raised is not None  # the server aborts the connection


def test_a_stream_that_succeeds_ends_cleanly() -> None:
    messages, raised = call_stream(FakePipeline(chunks=3, error=None))
    bodies = [message for message in messages if message["type"] == "http.response.body"]
    assert raised is None and messages[0]["status"] == 200
    assert not bodies[-1].get("more_body", False)
    assert sum(len(message.get("body", b"")) for message in bodies) == 44 + 3 * 480 * 2
