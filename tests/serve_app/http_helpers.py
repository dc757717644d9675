"""Shared helpers of the HTTP contract tests: test audio, the error shape, registered voices, downloads."""

from __future__ import annotations

import io
import re
import struct
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import soundfile as sf

from tests.audio_samples import m4a_bytes
from tts_core import synthetic_speech
from tts_core.audio import MEDIA_TYPES

MODEL_RATE = 24000
PRETRAINED = ("pretrained_voice_001", "pretrained_voice_002")
PROMPT_TEXT = "Hello, this is a sample of my voice."
SHORT_TEXT = "Hello there."
ERROR_CODE_RE = re.compile(r"[a-z][a-z0-9_]*")
VOICE_FIELDS = {"voice_id", "name", "description", "voice_type", "language", "prompt_text", "audio_format",
                "created_at", "updated_at", "file_size", "duration", "sample_rate", "is_active"}
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def unique_id(prefix: str = "voice") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def speech_like(seconds: float = 1.5, rate: int = 16000, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like signal (harmonics, vibrato, syllable-rate envelope) in [-0.5, 0.5]."""
    return synthetic_speech.speech_like(seconds, rate, f0, np.random.default_rng(seed))


def wav_bytes(seconds: float = 1.5, rate: int = 16000, f0: float = 150.0, seed: int = 0) -> bytes:
    """A 16-bit PCM mono WAV file of speech-like audio."""
    return synthetic_speech.speech_like_wav(seconds, rate, f0, seed)


def encoded_sample(fmt: str, seconds: float = 1.5, rate: int = 16000, channels: int = 1) -> bytes:
    """Speech-like audio as a wav, flac, mp3 or m4a (AAC in MP4) file."""
    mono = speech_like(seconds, rate)
    if fmt == "m4a":
        return m4a_bytes(mono, rate)
    container, subtype = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"),
                          "mp3": ("MP3", "MPEG_LAYER_III")}[fmt]
    samples = mono if channels == 1 else np.stack([mono] * channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str | None = None, path: str | None = None,
                 message: str | None = None) -> dict[str, Any]:
    """The response is `status` with exactly `{error, message, details: {path, ...}}`; returns the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert_error_shape(response, path)
    body = response.json()
    if code is not None:
        assert body["error"] == code, body
    if message is not None:
        assert body["message"] == message, body
    return body


def assert_error_shape(response: httpx.Response, path: str | None = None) -> None:
    """Any non-2xx body: the contract's one error shape, `details.path` being the request's URL path."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"}, body
    assert isinstance(body["error"], str) and ERROR_CODE_RE.fullmatch(body["error"]), body
    assert isinstance(body["message"], str) and body["message"], body
    details = body["details"]
    assert isinstance(details, dict) and isinstance(details.get("path"), str), body
    expected = path if path is not None else urlsplit(str(response.request.url)).path
    # The server reports the decoded path; compare decoded forms when the request percent-encoded it.
    assert unquote(details["path"]) == unquote(expected), (details["path"], expected)
    assert "://" not in details["path"], body
    if response.status_code == 422:
        assert body["error"] == "validation_error", body
        errors = details.get("errors")
        assert isinstance(errors, list) and errors, body
        for error in errors:
            assert set(error) == {"loc", "msg", "type"}, error
            assert isinstance(error["loc"], list) and isinstance(error["msg"], str) and isinstance(error["type"], str)


def assert_voice(voice: dict[str, Any], **expected: Any) -> None:
    """A Voice object: exactly the public fields, with sane values, and `expected` ones as given."""
    assert set(voice) == VOICE_FIELDS, sorted(voice)
    assert voice["is_active"] is True
    assert voice["voice_type"] in ("sft", "zero_shot", "cross_lingual", "instruct")
    assert voice["audio_format"] in ("wav", "mp3", "flac")
    assert TIMESTAMP_RE.fullmatch(voice["created_at"]) and TIMESTAMP_RE.fullmatch(voice["updated_at"]), voice
    assert isinstance(voice["file_size"], int) and voice["file_size"] > 0
    assert isinstance(voice["sample_rate"], int) and voice["sample_rate"] > 0
    assert isinstance(voice["duration"], float | int) and voice["duration"] > 0
    for key, value in expected.items():
        assert voice[key] == value, (key, voice[key], value)


def register(client: httpx.Client, voice_id: str, voice_type: str = "zero_shot", audio: bytes | None = None,
             filename: str = "voice_sample.wav", **fields: str) -> httpx.Response:
    """POST /api/v1/voices/ as multipart; zero_shot voices get a prompt_text unless one is given."""
    data = {"voice_id": voice_id, "name": fields.pop("name", f"Voice {voice_id}"), "voice_type": voice_type}
    if voice_type == "zero_shot":
        data["prompt_text"] = PROMPT_TEXT
    data.update(fields)
    files = {"audio_file": (filename, wav_bytes() if audio is None else audio, "audio/wav")}
    return client.post("/api/v1/voices/", data=data, files=files)


def create_voice(client: httpx.Client, voice_id: str | None = None, voice_type: str = "zero_shot",
                 **fields: Any) -> dict[str, Any]:
    response = register(client, voice_id or unique_id(), voice_type, **fields)
    assert response.status_code == 201, response.text
    return response.json()


def delete_quietly(client: httpx.Client, *voice_ids: str) -> None:
    for voice_id in voice_ids:
        client.delete(f"/api/v1/voices/{voice_id}")


def assert_synthesis_result(body: dict[str, Any], fmt: str = "wav", mode_label: str | None = None) -> None:
    """The JSON answer of a non-streaming synthesis."""
    assert set(body) == {"success", "message", "audio_url", "duration", "format", "synthesis_time",
                         "sample_rate"}, body
    assert body["success"] is True
    assert isinstance(body["message"], str) and body["message"]
    if mode_label is not None:
        assert body["message"].startswith(mode_label), body["message"]
    assert re.fullmatch(rf"/api/v1/audio/[A-Za-z0-9][A-Za-z0-9_.-]*\.{fmt}", body["audio_url"]), body["audio_url"]
    assert body["format"] == fmt
    assert body["sample_rate"] == MODEL_RATE
    assert body["duration"] > 0 and body["synthesis_time"] >= 0


def download(client: httpx.Client, body: dict[str, Any]) -> bytes:
    """Fetch the file a synthesis answer points to, checking its content type."""
    response = client.get(body["audio_url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == MEDIA_TYPES[body["format"]]
    return response.content


def wav_chunks(data: bytes) -> dict[bytes, tuple[int, int]]:
    """RIFF chunk id -> (offset of its payload, declared size)."""
    chunks, offset = {}, 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        chunks[chunk_id] = (offset + 8, size)
        if chunk_id == b"data":
            break
        offset += 8 + size + (size & 1)
    return chunks


def check_audio(data: bytes, fmt: str, duration: float | None = None, rate: int = MODEL_RATE) -> np.ndarray:
    """The bytes really are `fmt` (RIFF 16-bit PCM mono / fLaC / MP3), mono at `rate`, and last `duration`
    seconds; returns the decoded samples."""
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
        assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
        chunks = wav_chunks(data)
        fmt_offset, fmt_size = chunks[b"fmt "]
        audio_format, channels, sample_rate, byte_rate, block_align, bits = struct.unpack(
            "<HHIIHH", data[fmt_offset:fmt_offset + 16])
        assert (audio_format, channels, sample_rate, bits) == (1, 1, rate, 16)
        assert block_align == 2 and byte_rate == 2 * rate
        data_offset, data_size = chunks[b"data"]
        assert data_offset + data_size == len(data)
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.subtype) == ("WAV", "PCM_16")
    elif fmt == "flac":
        assert data[:4] == b"fLaC", data[:16]
        info = sf.info(io.BytesIO(data))
        assert info.format == "FLAC"
    elif fmt == "mp3":
        assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0), data[:16]
        assert not data.startswith(b"RIFF")
        info = sf.info(io.BytesIO(data))
        assert info.format == "MP3"
    else:
        raise AssertionError(f"unknown format {fmt}")
    assert info.channels == 1 and info.samplerate == rate, info
    samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert samples.ndim == 1 and sample_rate == rate and len(samples) > 0
    if duration is not None:
        assert abs(len(samples) / rate - duration) <= 1e-3, (len(samples) / rate, duration)
    return samples


def post_large_body(base_url: str, path: str, size: int, content_type: str, chunked: bool, prefix: bytes = b"",
                    timeout_s: float = 60.0, piece: int = 1 << 20) -> tuple[int | None, bytes, int]:
    """POST a body of `size` bytes, `prefix` then spaces generated as they are sent, and stop sending as
    soon as the server answers (as a careful client does; httpx would insist on sending it all first).

    Returns the status (None if there was no answer), the response bytes and the body bytes sent.
    """
    import select
    import socket

    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n{framing}\r\n"
            "Connection: close\r\n\r\n").encode()
    data, sent, reply = b" " * piece, 0, b""
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as connection:
        connection.sendall(head)
        try:
            while sent < size and time.monotonic() < deadline:
                if select.select([connection], [], [], 0)[0]:
                    break  # the server answered before the body ended
                chunk = prefix if sent == 0 and prefix else data[: min(piece, size - sent)]
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            else:
                if chunked and sent >= size:
                    connection.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection while the body was still coming
            pass
        while time.monotonic() < deadline:
            try:
                more = connection.recv(65536)
            except OSError:
                break
            if not more:
                break
            reply += more
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    return status, reply, sent
