"""`cosyvoice-serve bench-first-byte`: how soon each output format's first audio bytes arrive, per route
(the OpenAI speech route, streamed as audio and as events; the service's own sft route, streamed and
as a file), one request at a time on a quiet service; and what each format's encoder costs, in this
process. Prints two tables, then one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass

import httpx
import numpy as np

from benchmarks.clients import REQUEST_TIMEOUT, ServiceProtocol, wait_ready
from benchmarks.options import add_common_arguments, model_options, positive_int
from benchmarks.service import LocalService
from benchmarks.workload import percentile
from tts_core.stream_encoding import OUTPUT_FORMATS, StreamEncoder

SFT_PATH, WAV_HEADER_BYTES = ServiceProtocol.SFT_PATH, ServiceProtocol.WAV_HEADER_BYTES

TEXT = "Hello, how are you today? This is a short test of streamed speech in every format."
OPENAI_PATH = "/v1/audio/speech"
#: Routes measured: name -> (path, streamed).
ROUTES = {"openai (audio)": (OPENAI_PATH, True), "openai (sse)": (OPENAI_PATH, True),
          "sft stream": (SFT_PATH, True), "sft file": (SFT_PATH, False)}


@dataclass
class Cell:
    route: str
    format: str
    streamed: bool
    first_audio_s: list[float]
    total_s: list[float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--url", help="measure the service already running at this base URL instead of starting "
                                      "one")
    parser.add_argument("--requests", type=positive_int, default=5, metavar="N",
                        help="requests per route and format, after one warm-up request (default 5)")


def request_body(route: str, fmt: str, voice: str, seed: int) -> dict:
    if route.startswith("openai"):
        return {"model": "cosyvoice2", "input": TEXT, "voice": voice, "response_format": fmt, "seed": seed,
                "stream_format": "sse" if route.endswith("(sse)") else "audio"}
    return {"text": TEXT, "voice_id": voice, "format": fmt, "stream": route == "sft stream", "seed": seed}


async def timed(client: httpx.AsyncClient, route: str, fmt: str, voice: str, seed: int) -> tuple[float, float]:
    """Seconds to the first audio byte (a streamed WAV's header does not count; for a file: the JSON
    answer, sent once the file is stored) and to the end of the response."""
    path, streamed = ROUTES[route]
    header = WAV_HEADER_BYTES if streamed and fmt == "wav" else 0
    events = route.endswith("(sse)")
    started = time.perf_counter()
    async with client.stream("POST", path, json=request_body(route, fmt, voice, seed)) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{route} {fmt}: HTTP {response.status_code}: {response.text[:300]}")
        audio, pending, first = 0, b"", None
        async for piece in response.aiter_raw():
            if events:  # count the audio the complete events carry
                *complete, pending = (pending + piece).split(b"\n\n")
                audio += sum(len(base64.b64decode(json.loads(event.removeprefix(b"data: ")).get("audio", "")))
                             for event in complete if event.strip())
            else:
                audio += len(piece)
            if first is None and audio > header:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def measure(base_url: str, requests: int, seed: int, voice: str | None) -> list[Cell]:
    await wait_ready(base_url, ServiceProtocol())
    voice = voice or await ServiceProtocol().default_voice(base_url)
    cells = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        await timed(client, "sft stream", "wav", voice, seed)  # warm-up: every stage has run once
        for route, (_, streamed) in ROUTES.items():
            for fmt in OUTPUT_FORMATS:
                results = [await timed(client, route, fmt, voice, seed + i) for i in range(requests)]
                cells.append(Cell(route, fmt, streamed, [first for first, _ in results],
                                  [total for _, total in results]))
    return cells


def report(cells: list[Cell]) -> str:
    lines = ["| route | format | streamed | first audio p50 | whole response p50 |", "|---|---|---|---|---|"]
    for cell in cells:
        first, total = percentile(cell.first_audio_s, 50) * 1000, percentile(cell.total_s, 50) * 1000
        lines.append(f"| {cell.route} | {cell.format} | {'yes' if cell.streamed else 'no (file)'} | {first:.0f} ms | "
                     f"{total:.0f} ms |")
    return "\n".join(lines)


def encoder_cost_ms(fmt: str, rate: int = 24000, seconds: int = 10, repeats: int = 3) -> float:
    """Milliseconds of encoding per second of audio (the best of `repeats`), fed one-second chunks of a
    harmonic tone with noise, as a stream is."""
    t = np.arange(seconds * rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
             + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encoder = StreamEncoder(fmt, rate)
        encoder.start()
        for chunk in np.split(audio, seconds):
            encoder.encode(chunk)
        encoder.finish()
        best = min(best, (time.perf_counter() - started) / seconds * 1000)
    return best


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if args.url:
            base_url = args.url.rstrip("/")
        else:
            options = model_options(args)
            base_url = stack.enter_context(LocalService(options.model_dir, options.dtype,
                                                        options.torch_threads)).base_url
        cells = asyncio.run(measure(base_url, args.requests, args.seed, args.voice))
    costs = {fmt: round(encoder_cost_ms(fmt), 2) for fmt in OUTPUT_FORMATS}
    print(report(cells))
    print("\n| format | encoder, ms per second of audio |\n|---|---|")
    print("\n".join(f"| {fmt} | {cost:.1f} |" for fmt, cost in costs.items()))
    print(json.dumps({"first_byte": [{"route": cell.route, "format": cell.format, "streamed": cell.streamed,
                                      "first_audio_p50_s": round(percentile(cell.first_audio_s, 50), 4),
                                      "total_p50_s": round(percentile(cell.total_s, 50), 4)} for cell in cells],
                      "encoder_ms_per_audio_s": costs}))
    return 0
