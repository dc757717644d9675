"""`cosyvoice-serve bench-first-audio`: how soon speech starts when text is still being written.

For each sentence, three measurements against a service started here (or `--url`):

- WebSocket, text written at `--tokens-per-second` (a language model's pace, one word-sized piece
  per token): time from sending the first piece to receiving the first audio byte, next to the
  time the last piece was sent. The goal: the first audio arrives before the text is complete.
- The ordinary streamed route (`POST /api/v1/synthesize/sft`, `stream: true`) given the whole
  text at once: time from sending the request to the first PCM byte.
- Cancel: a WebSocket utterance of the whole text is cancelled as its first audio frame arrives;
  time from sending `cancel` to the last audio frame of that utterance the client receives (0
  when none arrives after it) and to its `done` event.

It prints a table of medians and 95th percentiles, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from benchmarks.clients import REQUEST_TIMEOUT, ServiceProtocol, read_body, wait_ready
from benchmarks.options import add_common_arguments, model_options, positive_int
from benchmarks.service import LocalService
from benchmarks.workload import SENTENCES, WARMUP_TEXT, percentile

WS_PATH = "/api/v1/ws/synthesize"
SFT_PATH, WAV_HEADER_BYTES = ServiceProtocol.SFT_PATH, ServiceProtocol.WAV_HEADER_BYTES
#: The longer sentences of the workload: a reply a voice agent would speak.
TEXTS = tuple(sentence for sentence in SENTENCES if len(sentence) > 60)


def replies(sentences: int) -> list[str]:
    """One reply per sentence of TEXTS: it and the sentences after it, `sentences` in all."""
    return [" ".join(TEXTS[(index + offset) % len(TEXTS)] for offset in range(sentences))
            for index in range(len(TEXTS))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--url", help="measure a running service instead of starting one")
    parser.add_argument("--repeat", type=positive_int, default=2, metavar="N",
                        help="rounds over the sentences (default 2)")
    parser.add_argument("--tokens-per-second", type=float, default=20.0,
                        help="pace at which the WebSocket client writes text (default 20)")
    parser.add_argument("--sentences", type=positive_int, default=1, metavar="N",
                        help="sentences per reply (default 1: about 0.8 s of writing at 20 tokens/s)")


def llm_pieces(text: str) -> list[str]:
    """Text as a language model emits it: word-sized pieces with their leading space."""
    return re.findall(r"\s*\S+", text)


async def websocket_first_audio(url: str, voice_id: str, text: str, seed: int, pace_s: float) -> dict[str, float]:
    pieces = llm_pieces(text)
    async with connect(url, max_size=None, open_timeout=60) as socket:
        await socket.send(json.dumps({"type": "config", "voice_id": voice_id, "seed": seed}))
        first_audio: float | None = None

        async def read() -> None:
            nonlocal first_audio
            async for message in socket:
                if isinstance(message, bytes):
                    first_audio = first_audio or time.perf_counter()
                    continue
                event = json.loads(message)
                if event["type"] == "error":
                    raise RuntimeError(f"the service answered {event}")
                if event["type"] == "done":
                    return

        reader = asyncio.create_task(read())
        started = time.perf_counter()
        for index, piece in enumerate(pieces):
            await socket.send(json.dumps({"type": "text", "text": piece}))
            if index + 1 < len(pieces):
                await asyncio.sleep(max(0.0, started + (index + 1) * pace_s - time.perf_counter()))
        last_piece = time.perf_counter()
        await socket.send(json.dumps({"type": "end"}))
        await reader
    return {"first_audio_s": first_audio - started, "text_written_s": last_piece - started,
            "pieces": len(pieces)}


async def http_first_audio(base_url: str, voice_id: str, text: str, seed: int) -> float:
    body = {"text": text, "voice_id": voice_id, "stream": True, "seed": seed}
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        started = time.perf_counter()
        async with client.stream("POST", SFT_PATH, json=body) as response:
            response.raise_for_status()
            _, _, first = await read_body(response, started, WAV_HEADER_BYTES)
    return first


async def cancel_latency(url: str, voice_id: str, text: str, seed: int) -> dict[str, float]:
    async with connect(url, max_size=None, open_timeout=60) as socket:
        await socket.send(json.dumps({"type": "config", "voice_id": voice_id, "seed": seed}))
        await socket.send(json.dumps({"type": "text", "text": text}))
        await socket.send(json.dumps({"type": "end"}))
        cancelled_at = last_frame = None
        frames_after = 0
        async for message in socket:
            if isinstance(message, bytes):
                if cancelled_at is None:
                    cancelled_at = time.perf_counter()
                    await socket.send(json.dumps({"type": "cancel"}))
                else:
                    last_frame, frames_after = time.perf_counter(), frames_after + 1
                continue
            event = json.loads(message)
            if event["type"] == "done":
                done_at = time.perf_counter()
                break
    return {"cancel_to_last_frame_s": (last_frame - cancelled_at) if last_frame else 0.0,
            "cancel_to_done_s": done_at - cancelled_at, "frames_after_cancel": frames_after}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 4), "p95": round(percentile(values, 95), 4)}


async def measure(base_url: str, voice_id: str, rounds: int, seed: int, tokens_per_second: float,
                  sentences: int = 1) -> dict[str, Any]:
    ws_url = base_url.replace("http", "ws", 1) + WS_PATH
    pace = 1.0 / tokens_per_second
    await websocket_first_audio(ws_url, voice_id, WARMUP_TEXT, seed, pace)  # one-off costs first
    await http_first_audio(base_url, voice_id, WARMUP_TEXT, seed)
    rows = []
    for round_index in range(rounds):
        for index, text in enumerate(replies(sentences)):
            request_seed = seed + round_index * len(TEXTS) + index
            streamed = await websocket_first_audio(ws_url, voice_id, text, request_seed, pace)
            whole = await http_first_audio(base_url, voice_id, text, request_seed)
            cancel = await cancel_latency(ws_url, voice_id, text, request_seed)
            rows.append(dict(streamed, http_first_audio_s=whole, **cancel, text=text))
    return {
        "tokens_per_second": tokens_per_second, "sentences": sentences, "requests": len(rows),
        "ws_first_audio_s": summary([row["first_audio_s"] for row in rows]),
        "ws_text_written_s": summary([row["text_written_s"] for row in rows]),
        "ws_first_audio_before_text_complete": sum(row["first_audio_s"] < row["text_written_s"] for row in rows),
        "http_stream_first_audio_s": summary([row["http_first_audio_s"] for row in rows]),
        "cancel_to_last_frame_s": summary([row["cancel_to_last_frame_s"] for row in rows]),
        "cancel_to_done_s": summary([row["cancel_to_done_s"] for row in rows]),
        "rows": rows,
    }


def run(args: argparse.Namespace) -> int:
    """Print the figures, then one JSON line."""
    async def drive(base_url: str) -> dict[str, Any]:
        protocol = ServiceProtocol()
        await wait_ready(base_url, protocol)
        voice_id = args.voice or await protocol.default_voice(base_url)
        return await measure(base_url, voice_id, args.repeat, args.seed, args.tokens_per_second, args.sentences)

    if args.url:
        report, model = asyncio.run(drive(args.url.rstrip("/"))), args.url
    else:
        options = model_options(args)
        with LocalService(options.model_dir, options.dtype, options.torch_threads) as service:
            report = asyncio.run(drive(service.base_url))
        model = str(options.model_dir)
    print(f"text written at {report['tokens_per_second']:g} tokens/s, {report['requests']} utterances")
    for name, label in [("ws_first_audio_s", "WebSocket: first text piece -> first audio"),
                        ("ws_text_written_s", "WebSocket: first text piece -> last text piece"),
                        ("http_stream_first_audio_s", "POST sft stream, whole text -> first audio"),
                        ("cancel_to_last_frame_s", "cancel -> last audio frame of the utterance"),
                        ("cancel_to_done_s", "cancel -> its done event")]:
        print(f"{label:50s} p50 {report[name]['p50']:.3f} s  p95 {report[name]['p95']:.3f} s")
    print(f"first audio before the last text piece: {report['ws_first_audio_before_text_complete']} of "
          f"{report['requests']}")
    print(json.dumps(dict(report, model=model)), flush=True)
    return 0
