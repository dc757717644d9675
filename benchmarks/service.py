"""The service side of the benchmark: a private Ray Serve instance, driven over HTTP."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from benchmarks.memory import descendants
from benchmarks.workload import BenchRequest, RequestResult
from serve_app.local import LocalServe

logger = logging.getLogger(__name__)
# httpx logs every request at INFO, which would bury the benchmark's own log under thousands of lines.
logging.getLogger("httpx").setLevel(logging.WARNING)

SFT_PATH = "/api/v1/synthesize/sft"
PRETRAINED_PATH = "/api/v1/voices/pretrained/list"
HEALTH_PATH = "/health"
PREFERRED_VOICE = "pretrained_voice_001"
#: A streamed response starts with a WAV header (`tts_core.audio.streaming_wav_header`), then 16-bit PCM.
WAV_HEADER_BYTES = 44
APP_NAME = "cosyvoice"
#: No request of the benchmark should take this long, even on the real-size twin at concurrency 16.
REQUEST_TIMEOUT = httpx.Timeout(1800.0, connect=30.0)


class LocalService:
    """The whole Serve application on a private Ray instance (`serve_app.local`), for the length of
    a `with` block, in its own temp dir. Ray is started from this process, so every process of the
    service descends from it: that is how its memory is found.
    """

    def __init__(self, model_dir: Path, dtype: str, torch_threads: int,
                 deployment_options: dict[str, dict[str, Any]] | None = None):
        self.model_dir, self.dtype, self.torch_threads = model_dir, dtype, torch_threads
        self.deployment_options = deployment_options
        self.workdir: Path | None = None
        self.service: LocalServe | None = None

    @property
    def base_url(self) -> str:
        assert self.service is not None, "the service runs inside the with block"
        return self.service.base_url

    def processes(self) -> list[psutil.Process]:
        return descendants()

    def __enter__(self) -> LocalService:
        # Short, since Ray's Unix socket paths live under it.
        self.workdir = Path(tempfile.mkdtemp(prefix="cvbench-"))
        data = self.workdir / "data"
        settings = {"model_dir": str(self.model_dir), "dtype": self.dtype, "torch_threads": self.torch_threads,
                    "voice_store_uri": str(data / "voices"), "output_store_uri": str(data / "audio"),
                    "task_store_uri": str(data / "tasks")}
        self.service = LocalServe(settings, app_name=APP_NAME, temp_dir=str(self.workdir / "ray"),
                                  deployment_options=self.deployment_options)
        started = time.perf_counter()
        try:
            self.service.start()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        logger.info("service up at %s in %.1f s", self.base_url, time.perf_counter() - started)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        started = time.perf_counter()
        self.service.stop()
        logger.info("service stopped in %.1f s", time.perf_counter() - started)
        shutil.rmtree(self.workdir, ignore_errors=True)


async def wait_ready(base_url: str, timeout_s: float = 120.0) -> None:
    """Until the health route answers 200 (a service given by --url may still be starting)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        while True:
            try:
                if (await client.get(HEALTH_PATH)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service at {base_url} did not become healthy in {timeout_s:.0f} s")
            await asyncio.sleep(1.0)


async def pick_voice(base_url: str) -> str:
    """pretrained_voice_001 if the model has it, else its first pretrained voice."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        response = await client.get(PRETRAINED_PATH)
        response.raise_for_status()
        voices = response.json().get("pretrained_voices", [])
    if not voices:
        raise RuntimeError("the service lists no pretrained voices; pass --voice with a registered voice id")
    return PREFERRED_VOICE if PREFERRED_VOICE in voices else voices[0]


async def http_request(client: httpx.AsyncClient, request: BenchRequest, stream: bool, voice_id: str) -> RequestResult:
    """One sft synthesis as a client sees it.

    Streaming: first audio is the first PCM byte after the 44-byte header; audio seconds come from
    the PCM byte count. Whole: the response is JSON once the file is stored, so first audio is the
    full response time, and audio seconds are its `duration`.
    """
    body = {"text": request.text, "voice_id": voice_id, "speed": 1.0, "format": "wav", "stream": stream,
            "seed": request.seed}
    started = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", SFT_PATH, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    return _failed(request, started, f"HTTP {response.status_code}: {response.text[:200]}")
                received, header, first = 0, b"", None
                async for piece in response.aiter_raw():
                    if received < WAV_HEADER_BYTES:
                        header += piece[:WAV_HEADER_BYTES - received]
                    received += len(piece)
                    if first is None and received > WAV_HEADER_BYTES:
                        first = time.perf_counter() - started
            latency = time.perf_counter() - started
            if received < WAV_HEADER_BYTES:
                return _failed(request, started, f"stream ended after {received} bytes")
            sample_rate = int.from_bytes(header[24:28], "little")
            audio_s = (received - WAV_HEADER_BYTES) / 2 / sample_rate
            return RequestResult(index=request.index, latency_s=latency, ttfa_s=first, audio_s=audio_s)
        response = await client.post(SFT_PATH, json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return _failed(request, started, f"HTTP {response.status_code}: {response.text[:200]}")
        return RequestResult(index=request.index, latency_s=latency, ttfa_s=latency,
                             audio_s=float(response.json()["duration"]))
    except Exception as exc:  # a failed request is a figure of the benchmark, not the end of it
        return _failed(request, started, f"{type(exc).__name__}: {exc}")


def _failed(request: BenchRequest, started: float, error: str) -> RequestResult:
    return RequestResult(index=request.index, latency_s=time.perf_counter() - started, error=error)


async def run_level(base_url: str, requests: list[BenchRequest], concurrency: int, stream: bool,
                    voice_id: str) -> tuple[list[RequestResult], float]:
    """`concurrency` clients, each sending its next request as soon as its last one finished.

    Returns the results in request order and the wall time of the whole level.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[RequestResult] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        pending = iter(requests)  # shared: each worker takes the next request left

        async def worker() -> None:
            for request in pending:
                results.append(await http_request(client, request, stream, voice_id))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return sorted(results, key=lambda result: result.index), wall

