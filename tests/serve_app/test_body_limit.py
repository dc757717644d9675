"""The request-body bound, in process (httpx's ASGI transport): refused by `Content-Length` before a
byte is read, and a chunked body refused as soon as it passes the limit, in the API's error shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, File, UploadFile
from pydantic import BaseModel

from serve_app.api.body_limit import RequestBodyLimit
from serve_app.api.errors import install_error_handlers
from tts_core.limits import MAX_BODY_BYTES, MAX_MULTIPART_BODY_BYTES

CHUNK = 64 * 1024


class Body(BaseModel):
    text: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestBodyLimit)

    @app.post("/json")
    async def json_route(body: Body) -> dict:
        return {"chars": len(body.text)}

    @app.post("/upload")
    async def upload_route(audio_file: Annotated[UploadFile, File()]) -> dict:
        return {"bytes": len(await audio_file.read())}

    return app


class CountingBody:
    """A streamed request body of `size` bytes that counts what the server pulled."""

    def __init__(self, size: int, prefix: bytes = b""):
        self.size, self.prefix, self.sent = size, prefix, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.prefix
        self.sent += len(self.prefix)
        while self.sent < self.size:
            chunk = b" " * min(CHUNK, self.size - self.sent)
            self.sent += len(chunk)
            yield chunk


def post(path: str, **kwargs) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://test") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(send())


def assert_too_large(response: httpx.Response, path: str, limit: int) -> dict:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error"] == "payload_too_large" and body["details"]["path"] == path
    assert body["details"]["limit_bytes"] == limit and body["details"]["request_id"]
    assert "\n" not in body["message"]
    return body


def test_a_small_json_body_passes() -> None:
    response = post("/json", json={"text": "hello"})
    assert response.status_code == 200 and response.json() == {"chars": 5}


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = CountingBody(200 * 2**20)
    response = post("/json", content=body, headers={"content-type": "application/json",
                                                    "content-length": str(body.size)})
    assert_too_large(response, "/json", MAX_BODY_BYTES)
    assert body.sent == 0


def test_a_chunked_json_body_is_refused_at_the_limit() -> None:
    body = CountingBody(200 * 2**20, prefix=b'{"text": "')
    response = post("/json", content=body, headers={"content-type": "application/json"})
    assert_too_large(response, "/json", MAX_BODY_BYTES)
    assert body.sent <= MAX_BODY_BYTES + CHUNK + len(body.prefix)


def test_a_chunked_upload_is_refused_at_the_upload_limit() -> None:
    boundary = "limit-test"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio_file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    body = CountingBody(120 * 2**20, prefix=head)
    response = post("/upload", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_too_large(response, "/upload", MAX_MULTIPART_BODY_BYTES)
    assert body.sent <= MAX_MULTIPART_BODY_BYTES + CHUNK + len(head)


def test_an_upload_under_its_limit_is_read_while_the_same_size_as_json_is_not() -> None:
    data = b"\x01" * (2 * MAX_BODY_BYTES)
    assert post("/upload", files={"audio_file": ("a.wav", data, "audio/wav")}).json() == {"bytes": len(data)}
    assert_too_large(post("/json", json={"text": "x" * len(data)}), "/json", MAX_BODY_BYTES)


@pytest.mark.parametrize(("sent", "kept"), [("abc-123", True), ("a" * 129, False), ("\x1b[31m/etc/passwd", False)],
                         ids=["safe", "too-long", "unsafe"])
def test_a_client_request_id_is_kept_only_when_it_is_safe_to_echo(sent, kept) -> None:
    response = post("/json", content=b"{", headers={"content-type": "application/json",
                                                     "x-request-id": sent.encode("latin-1")})
    assert response.status_code == 422
    request_id = response.json()["details"]["request_id"]
    assert (request_id == sent) is kept and request_id.isprintable() and "/" not in request_id


def test_an_app_that_gives_up_reading_without_answering_still_gets_the_413() -> None:
    """As Ray Serve's proxy does: it reads the body in a task of its own and, when that read fails,
    returns without a response."""

    async def reads_in_a_task(scope, receive, send) -> None:
        async def read_all() -> None:
            while (await receive()).get("more_body"):
                pass

        reader = asyncio.create_task(read_all())
        await asyncio.wait([reader])

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestBodyLimit(reads_in_a_task))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/json", content=body, headers={"content-type": "application/json"})

    body = CountingBody(2 * MAX_BODY_BYTES)
    assert_too_large(asyncio.run(send()), "/json", MAX_BODY_BYTES)
    assert body.sent <= MAX_BODY_BYTES + CHUNK
