"""The benchmark's HTTP clients: how a request of the workload is sent to a server, and timed.

Two protocols, so that any running server can be driven with the same workload:

- `cosyvoice-serve`: this service's API (`/api/v1/synthesize/sft` as JSON, `/zero-shot` as a
  multipart form with the prompt file). Streamed answers are a WAV header, then 16-bit PCM;
  whole answers are JSON once the file is stored, with its `duration`.
- `upstream`: upstream CosyVoice's own FastAPI server (`runtime/python/fastapi/server.py`):
  `/inference_sft` (form: tts_text, spk_id) and `/inference_zero_shot` (form: tts_text,
  prompt_text, file prompt_wav). It synthesises whole segments (no streaming option, no seed) and
  answers each as raw 16-bit PCM at the model's sample rate, with no header.

First audio is the first PCM byte in a streamed body; for a JSON answer, the full response time.
This service's answers say where that time went, stage by stage (`Server-Timing`); it is kept
per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from benchmarks.workload import BenchRequest, RequestResult, Speaker
from tts_core.timing import parse_server_timing

# httpx logs every request at INFO, which would bury the benchmark's own log under thousands of lines.
logging.getLogger("httpx").setLevel(logging.WARNING)

PROTOCOLS = ("cosyvoice-serve", "upstream")
PREFERRED_VOICE = "pretrained_voice_001"
#: No request of the benchmark should take this long, even on the real-size twin at concurrency 16.
REQUEST_TIMEOUT = httpx.Timeout(1800.0, connect=30.0)


def failed(request: BenchRequest, started: float, error: str) -> RequestResult:
    return RequestResult(index=request.index, latency_s=time.perf_counter() - started, error=error)


async def read_body(response: httpx.Response, started: float, header_bytes: int) -> tuple[int, bytes, float | None]:
    """Read a streamed body: its size, its first `header_bytes` bytes, and when the first byte
    after them arrived (seconds from `started`; None if none did)."""
    received, header, first = 0, b"", None
    async for piece in response.aiter_raw():
        if received < header_bytes:
            header += piece[:header_bytes - received]
        received += len(piece)
        if first is None and received > header_bytes:
            first = time.perf_counter() - started
    return received, header, first


class ServiceProtocol:
    """This service's API."""

    name = "cosyvoice-serve"
    streams = True
    SFT_PATH = "/api/v1/synthesize/sft"
    ZERO_SHOT_PATH = "/api/v1/synthesize/zero-shot"
    PRETRAINED_PATH = "/api/v1/voices/pretrained/list"
    HEALTH_PATH = "/health"
    #: A streamed response starts with a WAV header (`tts_core.audio.streaming_wav_header`), then 16-bit PCM.
    WAV_HEADER_BYTES = 44

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        return (await client.get(self.HEALTH_PATH)).status_code == 200

    async def default_voice(self, base_url: str) -> str:
        """pretrained_voice_001 if the model has it, else its first pretrained voice."""
        async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
            response = await client.get(self.PRETRAINED_PATH)
            response.raise_for_status()
            voices = response.json().get("pretrained_voices", [])
        if not voices:
            raise RuntimeError("the service lists no pretrained voices; pass --voice with a registered voice id")
        return PREFERRED_VOICE if PREFERRED_VOICE in voices else voices[0]

    def _request_args(self, request: BenchRequest, stream: bool, speaker: Speaker) -> dict[str, Any]:
        fields = {"text": request.text, "speed": 1.0, "format": "wav", "stream": stream, "seed": request.seed}
        if speaker.workload == "sft":
            return {"url": self.SFT_PATH, "json": dict(fields, voice_id=speaker.voice_id)}
        form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in fields.items()}
        return {"url": self.ZERO_SHOT_PATH, "data": dict(form, prompt_text=speaker.prompt_text),
                "files": {"prompt_audio": ("prompt.wav", speaker.prompt_wav, "audio/wav")}}

    async def request(self, client: httpx.AsyncClient, request: BenchRequest, stream: bool,
                      speaker: Speaker) -> RequestResult:
        """Streaming: audio seconds from the PCM byte count and the header's sample rate. Whole:
        the stored file's `duration` from the JSON answer."""
        started = time.perf_counter()
        try:
            async with client.stream("POST", **self._request_args(request, stream, speaker)) as response:
                if response.status_code != 200:
                    await response.aread()
                    return failed(request, started, f"HTTP {response.status_code}: {response.text[:200]}")
                stages = parse_server_timing(response.headers.get("server-timing", "")) or None
                if not stream:
                    await response.aread()
                    latency = time.perf_counter() - started
                    return RequestResult(index=request.index, latency_s=latency, ttfa_s=latency,
                                         audio_s=float(response.json()["duration"]), stages=stages)
                received, header, first = await read_body(response, started, self.WAV_HEADER_BYTES)
            latency = time.perf_counter() - started
            if received < self.WAV_HEADER_BYTES:
                return failed(request, started, f"stream ended after {received} bytes")
            sample_rate = int.from_bytes(header[24:28], "little")
            return RequestResult(index=request.index, latency_s=latency, ttfa_s=first,
                                 audio_s=(received - self.WAV_HEADER_BYTES) / 2 / sample_rate, stages=stages)
        except Exception as exc:  # a failed request is a figure of the benchmark, not the end of it
            return failed(request, started, f"{type(exc).__name__}: {exc}")


class UpstreamProtocol:
    """Upstream CosyVoice's FastAPI server. It has no voice list, so the voice is --voice or
    pretrained_voice_001, and no health route: any HTTP answer means it is up."""

    name = "upstream"
    streams = False
    SFT_PATH = "/inference_sft"
    ZERO_SHOT_PATH = "/inference_zero_shot"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        await client.get("/")
        return True

    async def default_voice(self, base_url: str) -> str:
        return PREFERRED_VOICE

    def _request_args(self, request: BenchRequest, speaker: Speaker) -> dict[str, Any]:
        if speaker.workload == "sft":
            return {"url": self.SFT_PATH, "data": {"tts_text": request.text, "spk_id": speaker.voice_id}}
        return {"url": self.ZERO_SHOT_PATH, "data": {"tts_text": request.text, "prompt_text": speaker.prompt_text},
                "files": {"prompt_wav": ("prompt_wav", speaker.prompt_wav, "application/octet-stream")}}

    async def request(self, client: httpx.AsyncClient, request: BenchRequest, stream: bool,
                      speaker: Speaker) -> RequestResult:
        """First audio: the first PCM byte, i.e. the first segment's whole synthesis."""
        started = time.perf_counter()
        try:
            async with client.stream("POST", **self._request_args(request, speaker)) as response:
                if response.status_code != 200:
                    await response.aread()
                    return failed(request, started, f"HTTP {response.status_code}: {response.text[:200]}")
                received, _, first = await read_body(response, started, 0)
            latency = time.perf_counter() - started
            if received == 0:
                return failed(request, started, "empty response")
            return RequestResult(index=request.index, latency_s=latency, ttfa_s=first,
                                 audio_s=received / 2 / self.sample_rate)
        except Exception as exc:  # a failed request is a figure of the benchmark, not the end of it
            return failed(request, started, f"{type(exc).__name__}: {exc}")


ServerProtocol = ServiceProtocol | UpstreamProtocol


def protocol_for(name: str, sample_rate: int = 24000) -> ServerProtocol:
    return UpstreamProtocol(sample_rate) if name == "upstream" else ServiceProtocol()


async def wait_ready(base_url: str, protocol: ServerProtocol, timeout_s: float = 120.0) -> None:
    """Until the server answers as ready (one given by URL may still be starting)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        while True:
            try:
                if await protocol.is_ready(client):
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {base_url} did not become ready in {timeout_s:.0f} s")
            await asyncio.sleep(1.0)


async def run_level(base_url: str, protocol: ServerProtocol, requests: list[BenchRequest], concurrency: int,
                    stream: bool, speaker: Speaker) -> tuple[list[RequestResult], float]:
    """`concurrency` clients, each sending its next request as soon as its last one finished.

    Returns the results in request order and the wall time of the whole level.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[RequestResult] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        pending = iter(requests)  # shared: each worker takes the next request left

        async def worker() -> None:
            for request in pending:
                results.append(await protocol.request(client, request, stream, speaker))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return sorted(results, key=lambda result: result.index), wall
