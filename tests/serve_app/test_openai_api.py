"""The OpenAI speech API through the official `openai` client, pointed at the running service: every
response format, streamed as audio and as server-sent events, compared with the same seed's exact
PCM and decoded; voices, models, and OpenAI's error shape on `/v1`."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest

from tests.audio_samples import decode_output
from tests.serve_app.http_helpers import MODEL_RATE, assert_error
from tts_core.stream_encoding import StreamEncoder

TEXT = "Hello there, this is a test of the speech route."
SEED = 11
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
LOSSY = {"mp3", "opus", "aac"}
#: Most samples a lossy codec adds at the start (priming and decoder delay) and at the end (padding).
CODEC_DELAY, CODEC_PADDING = 1105, 2048


@pytest.fixture(scope="module")
def client(serve_cluster) -> openai.OpenAI:
    with openai.OpenAI(base_url=serve_cluster["base_url"] + "/v1", api_key="not-needed", max_retries=0,
                       timeout=120) as client:
        yield client


def speech(client: openai.OpenAI, fmt: str, **fields) -> bytes:
    request = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt, **fields}
    return client.audio.speech.create(**request, extra_body={"seed": SEED}).content


def streamed(client: openai.OpenAI, fmt: str, stream_format: str) -> list[bytes]:
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=TEXT, response_format=fmt, stream_format=stream_format,
            extra_body={"seed": SEED}) as response:
        assert response.status_code == 200
        return [chunk for chunk in response.iter_bytes() if chunk]


@pytest.fixture(scope="module")
def exact_pcm(client) -> np.ndarray:
    """The seed's audio, as raw 16-bit samples."""
    return decode_output(speech(client, "pcm"), "pcm")


@pytest.fixture(scope="module")
def created(client) -> dict[str, bytes]:
    """`client.audio.speech.create` in every format."""
    return {fmt: speech(client, fmt) for fmt in FORMATS}


def encoded(fmt: str, samples: np.ndarray) -> bytes:
    encoder = StreamEncoder(fmt, MODEL_RATE)
    return encoder.start() + encoder.encode(samples) + encoder.finish()


def check_decoded(data: bytes, fmt: str, exact: np.ndarray) -> None:
    """The bytes are the seed's audio encoded whole, byte for byte (the encoders are deterministic and
    do not depend on the chunking: tests/tts_core/test_stream_encoding.py shows how close each codec
    keeps to its input). They decode to that audio: sample for sample when lossless, with the codec's
    delay and padding when lossy (the twin's noise-like audio says little about a codec's fidelity)."""
    signature = {"mp3": (b"ID3", b"\xff"), "opus": (b"OggS",), "aac": (b"\xff",), "flac": (b"fLaC",),
                 "wav": (b"RIFF",)}
    assert fmt == "pcm" or data.startswith(signature[fmt]), data[:8]
    assert data == encoded(fmt, exact)
    decoded = decode_output(data, fmt)
    if fmt in LOSSY:
        assert len(exact) <= len(decoded) <= len(exact) + CODEC_DELAY + CODEC_PADDING, (len(decoded), len(exact))
    else:
        np.testing.assert_allclose(decoded, exact, atol=1.5 / 32767)


def test_the_seed_gives_speech_length_audio(exact_pcm) -> None:
    assert 0.5 < len(exact_pcm) / MODEL_RATE < 20 and np.abs(exact_pcm).max() > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_in_every_format(created, exact_pcm, fmt) -> None:
    check_decoded(created[fmt], fmt, exact_pcm)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_audio_in_every_format(client, created, fmt) -> None:
    """`stream_format: audio`: chunked bytes, the same as the whole answer (the encoders do not depend on
    how the audio was chunked)."""
    chunks = streamed(client, fmt, "audio")
    assert b"".join(chunks) == created[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_server_sent_events_in_every_format(client, created, fmt) -> None:
    body = b"".join(streamed(client, fmt, "sse")).decode()
    events = [json.loads(block.removeprefix("data: ")) for block in body.split("\n\n") if block.strip()]
    assert [event["type"] for event in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    assert b"".join(base64.b64decode(event["audio"]) for event in events[:-1]) == created[fmt]
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_content_types(serve_cluster) -> None:
    media = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
             "pcm": "audio/pcm"}
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as http:
        for fmt, stream_format in (("opus", "audio"), ("pcm", "audio"), ("mp3", "sse")):
            response = http.post("/v1/audio/speech", json={"model": "cosyvoice2", "input": "Hi.", "voice": "echo",
                                                           "response_format": fmt, "stream_format": stream_format})
            expected = "text/event-stream" if stream_format == "sse" else media[fmt]
            assert response.status_code == 200 and response.headers["content-type"].startswith(expected)
            assert response.headers.get("transfer-encoding") == "chunked"


def test_voices_models_and_instructions(client, zero_shot_voice, exact_pcm) -> None:
    """OpenAI names map to pretrained voices, any voice id works (also as `{"id": ...}`), and instructions
    switch to instruct mode."""
    same_voice = decode_output(client.audio.speech.create(
        model="cosyvoice2", voice={"id": "pretrained_voice_002"}, input=TEXT, response_format="pcm",
        extra_body={"seed": SEED}).content, "pcm")
    np.testing.assert_array_equal(same_voice, exact_pcm)  # alloy is pretrained_voice_002 by default
    other_voice = decode_output(speech(client, "pcm", voice="onyx"), "pcm")
    assert not np.array_equal(other_voice[:len(exact_pcm)], exact_pcm[:len(other_voice)])
    registered = speech(client, "pcm", voice=zero_shot_voice["voice_id"])
    instructed = speech(client, "pcm", instructions="Speak slowly and warmly.")
    assert len(registered) > 0 and len(instructed) > 0
    assert instructed[:len(exact_pcm) * 2] != speech(client, "pcm")[:len(exact_pcm) * 2]
    assert len(decode_output(speech(client, "pcm", speed=2.0), "pcm")) < len(exact_pcm)

    models = client.models.list()
    assert [model.id for model in models.data] == ["cosyvoice2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert client.models.retrieve("tts-1-hd").owned_by == "cosyvoice-serve"


def openai_error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(("fields", "status", "param", "code"), [
    ({"speed": 3.0}, 400, "speed", "unsupported_value"),
    ({"speed": 0.3}, 400, "speed", "unsupported_value"),
    ({"speed": 4.5}, 400, "speed", "invalid_value"),
    ({"voice": "nobody_here"}, 400, "voice", "voice_not_found"),
    ({"input": "   "}, 400, "input", "invalid_value"),
    ({"input": "a" * 4097}, 400, "input", "string_above_max_length"),
    ({"response_format": "ogg"}, 400, "response_format", "invalid_value"),
    ({"stream_format": "chunks"}, 400, "stream_format", "invalid_value"),
    ({"model": "tts-2"}, 404, "model", "model_not_found"),
])
def test_errors_in_openai_shape(client, fields, status, param, code) -> None:
    request = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **fields}
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.speech.create(**request)
    assert info.value.status_code == status
    error = openai_error(info)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    if param == "speed" and code == "unsupported_value":
        assert "0.5-2" in error["message"]


def test_routing_errors_in_openai_shape_only_under_v1(client, serve_cluster) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("whisper-1")
    assert openai_error(info)["code"] == "model_not_found"
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=30) as http:
        for method, path, status in (("GET", "/v1/nowhere", 404), ("GET", "/v1/audio/speech", 405)):
            response = http.request(method, path)
            assert response.status_code == status
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        missing = http.post("/v1/audio/speech", json={"input": "Hello.", "voice": "alloy"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
        broken = http.post("/v1/audio/speech", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
        assert_error(http.get("/api/v1/nowhere"), 404, "not_found")  # the service's own routes keep their shape
