"""Streaming synthesis over HTTP (`stream=true`): chunked audio/wav with an open-ended header, every
other output format encoded as it streams, bytes arriving while the model still works, and a client
that hangs up stopping the generation upstream."""

from __future__ import annotations

import struct
import time

import httpx
import numpy as np
import pytest
from ray import serve

from tests.audio_samples import decode_output
from tests.serve_app.http_helpers import MODEL_RATE, PROMPT_TEXT, assert_error, unique_id, wav_bytes
from tts_core.audio import MEDIA_TYPES
from tts_core.stream_encoding import OUTPUT_FORMATS, StreamEncoder
from tts_core.timing import parse_server_timing

STREAM_TEXT = ("Hello there, this is a streaming test with a longer text. It has several sentences in it, so the "
               "model has to work for a while. Each sentence makes more audio for the stream to carry, chunk by "
               "chunk. The client hears the start long before the end is ready. That is the whole point.")
LONG_TEXT = " ".join(f"This is sentence number {i} of a long text that keeps the model busy for quite a while."
                     for i in range(11))
INSTRUCTION = "Please speak in a happy and energetic tone"


def stream_request(client: httpx.Client, mode: str, text: str, voice_id: str | None = None, **extra):
    """Open a streaming request (a context manager yielding the response) in the mode's body kind."""
    path = f"/api/v1/synthesize/{mode}"
    if mode in ("sft", "instruct"):
        body = {"text": text, "voice_id": voice_id or "pretrained_voice_001", "stream": True, **extra}
        if mode == "instruct":
            body["instruct_text"] = INSTRUCTION
        return client.stream("POST", path, json=body)
    data = {"text": text, "stream": "true", **{key: str(value) for key, value in extra.items()}}
    if voice_id:
        return client.stream("POST", path, data={**data, "voice_id": voice_id})
    return client.stream("POST", path, data={**data, "prompt_text": PROMPT_TEXT},
                         files={"prompt_audio": ("prompt.wav", wav_bytes(), "audio/wav")})


def read_timed(response: httpx.Response, started: float) -> list[tuple[float, bytes]]:
    return [(time.perf_counter() - started, chunk) for chunk in response.iter_raw() if chunk]


def check_stream_headers(response: httpx.Response, fmt: str = "wav") -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == MEDIA_TYPES[fmt]
    assert "content-length" not in response.headers
    assert response.headers.get("transfer-encoding") == "chunked"


def check_streaming_wav(data: bytes) -> np.ndarray:
    """The open-ended WAV header (sizes 0xFFFFFFFF), then 16-bit PCM mono at the model rate."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and data[12:16] == b"fmt "
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    fmt_size, audio_format, channels, rate, byte_rate, block_align, bits = struct.unpack("<IHHIIHH", data[16:36])
    assert (fmt_size, audio_format, channels, rate, bits) == (16, 1, 1, MODEL_RATE, 16)
    assert (byte_rate, block_align) == (2 * MODEL_RATE, 2)
    assert data[36:40] == b"data" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    pcm = data[44:]
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, dtype="<i2")
    assert np.abs(samples).max() > 0
    return samples


@pytest.fixture(scope="module")
def llm(serve_cluster):
    return serve.get_deployment_handle("SpeechTokenLLM", app_name=serve_cluster["app_name"])


def llm_stats(llm) -> dict:
    return llm.stats.remote().result()


def test_stream_arrives_in_chunks_before_synthesis_ends(client) -> None:
    warm_up = client.post("/api/v1/synthesize/sft", json={"text": "Hi.", "voice_id": "pretrained_voice_001"})
    assert warm_up.status_code == 200
    started = time.perf_counter()
    with stream_request(client, "sft", STREAM_TEXT, seed=3) as response:
        check_stream_headers(response)
        arrivals = read_timed(response, started)
    data = b"".join(chunk for _, chunk in arrivals)
    samples = check_streaming_wav(data)
    assert len(samples) / MODEL_RATE > 3.0

    # Offsets of each chunk in the body: the first chunk carrying PCM vs the last one.
    offsets = np.cumsum([len(chunk) for _, chunk in arrivals])
    pcm_arrivals = [at for (at, _), end in zip(arrivals, offsets, strict=True) if end > 44]
    timeline = [(round(at, 3), len(chunk)) for at, chunk in arrivals]
    assert len(pcm_arrivals) >= 4, timeline
    first, last = pcm_arrivals[0], pcm_arrivals[-1]
    assert last - first > 0.3 and first < 0.5 * last, timeline


@pytest.mark.parametrize("mode", ["sft", "zero-shot", "cross-lingual", "instruct"])
def test_every_mode_streams(client, zero_shot_voice, mode) -> None:
    voice_id = None if mode == "cross-lingual" else zero_shot_voice["voice_id"]
    with stream_request(client, mode, "Hello there, how are you?", voice_id) as response:
        check_stream_headers(response)
        data = response.read()
    check_streaming_wav(data)


def test_stream_with_prompt_audio_multipart(client) -> None:
    with stream_request(client, "zero-shot", "Hello there.") as response:
        check_stream_headers(response)
        check_streaming_wav(response.read())


def test_stream_is_reproducible_with_a_seed(client) -> None:
    bodies = []
    for _ in range(2):
        with stream_request(client, "sft", "Hello there, how are you?", seed=17) as response:
            bodies.append(response.read())
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("mode", ["sft", "zero-shot", "cross-lingual", "instruct"])
def test_stream_errors_are_json_before_any_audio(client, mode) -> None:
    voice_id = unique_id("ghost")
    with stream_request(client, mode, "Hello.", voice_id) as response:
        response.read()
    assert_error(response, 404, "voice_not_found", message=f"Voice with ID '{voice_id}' not found")
    with stream_request(client, mode, "   ", "pretrained_voice_001") as response:
        response.read()
    assert_error(response, 400)
    with stream_request(client, mode, "Hello.", "pretrained_voice_001", format="ogg") as response:
        response.read()
    assert_error(response, 422, "validation_error")


@pytest.fixture(scope="module")
def seeded_pcm(module_client) -> np.ndarray:
    """A seeded stream's audio, as raw 16-bit samples."""
    with stream_request(module_client, "sft", STREAM_TEXT, format="pcm", seed=5) as response:
        check_stream_headers(response, "pcm")
        return decode_output(response.read(), "pcm")


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_every_format_streams_as_it_is_encoded(client, seeded_pcm, fmt) -> None:
    """Each format arrives in several chunks, and is the seed's audio encoded whole, byte for byte (the
    encoders do not depend on the chunking; tests/tts_core/test_stream_encoding.py shows each codec's
    fidelity); lossless formats decode to the exact samples."""
    with stream_request(client, "sft", STREAM_TEXT, format=fmt, seed=5) as response:
        check_stream_headers(response, fmt)
        chunks = [chunk for chunk in response.iter_raw() if chunk]
    encoder = StreamEncoder(fmt, MODEL_RATE)
    assert b"".join(chunks) == encoder.start() + encoder.encode(seeded_pcm) + encoder.finish()
    assert len(chunks) >= 3
    if fmt in ("wav", "pcm", "flac"):
        data = b"".join(chunks)
        decoded = decode_output(data[44:], "pcm") if fmt == "wav" else decode_output(data, fmt)
        np.testing.assert_allclose(decoded, seeded_pcm, atol=1.5 / 32767)  # decoders scale by 1/32768


def wait_until_idle(llm, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (stats := llm_stats(llm))["active_sequences"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return stats


def test_client_disconnect_stops_generation(serve_cluster, llm) -> None:
    """Hanging up after the first audio stops the LLM: without that, the long text's next segments would
    start being generated within a second or two of each other for many seconds more."""
    assert wait_until_idle(llm, 60)["active_sequences"] == 0, "the LLM is busy with something else"
    before = llm_stats(llm)
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        with stream_request(client, "sft", LONG_TEXT, seed=1) as response:
            check_stream_headers(response)
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > 44:  # the header and some audio
                    break
    hung_up = time.monotonic()
    stopped = wait_until_idle(llm, 3.0)
    assert stopped["active_sequences"] == 0, stopped
    assert stopped["tokens_generated"] > before["tokens_generated"]
    # Nothing more is generated for this request: no new segment starts, no token is added.
    while time.monotonic() - hung_up < 5.0:
        assert llm_stats(llm) == stopped
        time.sleep(0.1)


def test_server_timing_says_where_the_first_audio_time_went(client) -> None:
    """A stream's headers leave with its first chunk: their `Server-Timing` covers the voice's
    features, the LLM's first token and the first chunk's flow and vocoder calls, and adds up to no
    more than the time to the first byte."""
    started = time.perf_counter()
    with stream_request(client, "zero-shot", STREAM_TEXT, seed=5) as response:
        check_stream_headers(response)
        first_byte_s = time.perf_counter() - started
        stages = parse_server_timing(response.headers["server-timing"])
        check_streaming_wav(response.read())
    assert {"text", "prompt", "llm_first", "flow", "vocoder"} <= set(stages), stages
    assert all(seconds >= 0 for seconds in stages.values()), stages
    assert min(stages["prompt"], stages["llm_first"], stages["flow"], stages["vocoder"]) > 0, stages
    assert sum(stages.values()) <= first_byte_s, (stages, first_byte_s)

    whole_started = time.perf_counter()
    whole = client.post("/api/v1/synthesize/sft", json={"text": STREAM_TEXT, "voice_id": "pretrained_voice_001"})
    whole_s = time.perf_counter() - whole_started
    assert whole.status_code == 200
    stages = parse_server_timing(whole.headers["server-timing"])
    assert {"text", "prompt", "llm", "flow", "vocoder"} <= set(stages) and "llm_first" not in stages, stages
    assert sum(stages.values()) <= whole_s, (stages, whole_s)
