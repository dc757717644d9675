"""The speech WebSocket through the real Ray Serve proxy, with the `websockets` client: text in as it
is written, audio out before it is complete, equal to upstream; utterances in order, cancel, close,
formats, errors and RFC 6455 close codes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.deployments.test_bistream import PIECES
from tests.reference import finishing_seed, upstream_bistream_tts, upstream_frontend

PATH = "/api/v1/ws/synthesize"
VOICE = "pretrained_voice_001"
TEXT = "".join(PIECES)


def ws_url(serve_cluster: dict) -> str:
    return serve_cluster["base_url"].replace("http://", "ws://") + PATH


def open_socket(serve_cluster: dict, **config) -> ClientConnection:
    socket = connect(ws_url(serve_cluster), open_timeout=30, close_timeout=10, max_size=None)
    socket.send(json.dumps({"type": "config", "voice_id": VOICE, **config}))
    return socket


def send(socket: ClientConnection, kind: str, context_id: str = "default", **fields) -> None:
    socket.send(json.dumps({"type": kind, "context_id": context_id, **fields}))


class Received:
    """What a socket received: events and, per utterance, its audio frames in order."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.frames: dict[str, list[bytes]] = {}
        self.pending_chunk: dict | None = None

    def take(self, message: str | bytes) -> dict | None:
        if isinstance(message, bytes):
            chunk, self.pending_chunk = self.pending_chunk, None
            assert chunk is not None and chunk["bytes"] == len(message), "a frame follows its chunk event"
            self.frames.setdefault(chunk["context_id"], []).append(message)
            return None
        event = json.loads(message)
        assert self.pending_chunk is None, "a chunk event is followed by its frame"
        if event["type"] == "chunk":
            self.pending_chunk = event
        self.events.append(event)
        return event

    def of(self, kind: str, context_id: str | None = None) -> list[dict]:
        return [e for e in self.events if e["type"] == kind and context_id in (None, e.get("context_id"))]

    def audio(self, context_id: str = "default") -> bytes:
        return b"".join(self.frames.get(context_id, []))


def receive_until(socket: ClientConnection, received: Received, done: int = 1, timeout: float = 120.0) -> Received:
    """Receive until `done` utterances are over."""
    deadline = time.monotonic() + timeout
    while len(received.of("done")) < done:
        event = received.take(socket.recv(timeout=max(0.1, deadline - time.monotonic())))
        assert event is None or event["type"] != "error", event
    return received


def speak(serve_cluster: dict, text: str = TEXT, **config) -> Received:
    with open_socket(serve_cluster, **config) as socket:
        send(socket, "text", text=text)
        send(socket, "end")
        return receive_until(socket, Received())


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def test_audio_comes_before_the_text_is_complete_and_equals_upstream(serve_cluster, tiny_model) -> None:
    def upstream(seed: int) -> list:
        reference = upstream_frontend(tiny_model).frontend_sft((piece for piece in PIECES), VOICE)
        return upstream_bistream_tts(tiny_model, reference, seed)[1]

    seed, expected = finishing_seed(upstream)
    received = Received()
    with open_socket(serve_cluster, seed=seed) as socket:
        sent = 0
        while sent < len(PIECES) and not received.frames:  # write word by word until audio comes back
            send(socket, "text", text=PIECES[sent])
            sent += 1
            try:
                while not received.frames:
                    received.take(socket.recv(timeout=1.0))
            except TimeoutError:
                pass
        assert received.frames, "no audio before the whole text was written"
        print(f"first audio after {sent} of {len(PIECES)} text pieces")
        for piece in PIECES[sent:]:
            send(socket, "text", text=piece)
        send(socket, "end")
        receive_until(socket, received)

    [started] = received.of("started")
    assert started == {"type": "started", "context_id": "default", "format": "pcm", "sample_rate": 24000,
                       "seed": seed}
    audio = pcm16(received.audio())
    wanted = np.concatenate(expected)
    assert audio.shape == wanted.shape
    assert np.max(np.abs(audio - wanted)) <= 1e-4 + 0.5 / 32767  # the model's audio, quantised to 16 bits

    chunks = received.of("chunk")
    assert [chunk["index"] for chunk in chunks] == list(range(len(chunks)))
    assert sum(chunk["duration"] for chunk in chunks) == pytest.approx(len(wanted) / 24000, abs=1e-3)
    # The chunks' text spans cover the text once, in order.
    assert chunks[0]["text_start"] == 0 and chunks[-1]["text_end"] == len(TEXT)
    assert all(a["text_end"] == b["text_start"] for a, b in zip(chunks, chunks[1:], strict=False))
    assert "".join(chunk["text"] for chunk in chunks) == TEXT
    [done] = received.of("done")
    assert done["cancelled"] is False and done["chunks"] == len(chunks)


@pytest.mark.parametrize(("fmt", "rate", "bytes_per_sample"), [("pcm", 16000, 2), ("pcm", 8000, 2),
                                                               ("mulaw", 8000, 1), ("wav", 24000, 2)])
def test_formats_and_rates(serve_cluster, fmt, rate, bytes_per_sample) -> None:
    text = "Short, for the formats."
    reference = speak(serve_cluster, text, seed=3)
    samples_24k = len(reference.audio()) // 2
    received = speak(serve_cluster, text, seed=3, format=fmt, sample_rate=rate)
    assert received.of("started")[0]["sample_rate"] == rate
    data = received.audio()
    if fmt == "wav":
        assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
        assert data[44:] == reference.audio()
        return
    assert len(data) == bytes_per_sample * int(np.ceil(samples_24k * rate / 24000))


def test_utterances_play_in_order_and_cancel_stops_one_at_once(serve_cluster) -> None:
    received = Received()
    with open_socket(serve_cluster, seed=5) as socket:
        send(socket, "text", "first", text=TEXT * 3)
        send(socket, "end", "first")
        send(socket, "text", "second", text="And then this one.")
        send(socket, "end", "second")
        while "first" not in received.frames:
            received.take(socket.recv(timeout=120))
        send(socket, "cancel", "first")
        receive_until(socket, received, done=2)
        send(socket, "cancel", "first")  # an utterance that is over: nothing to do, no error
        send(socket, "text", "third", text="The socket is still open.")
        send(socket, "end", "third")
        receive_until(socket, received, done=3)

    done = {event["context_id"]: event for event in received.of("done")}
    assert done["first"]["cancelled"] and not done["second"]["cancelled"] and not done["third"]["cancelled"]
    order = [(event["type"], event["context_id"]) for event in received.events if event["type"] in ("chunk", "done")]
    first_done = order.index(("done", "first"))
    assert all(context == "first" for _, context in order[:first_done])  # nothing of "first" after its done
    assert ("chunk", "first") not in order[first_done:]
    assert order.index(("chunk", "second")) < order.index(("chunk", "third"))
    assert done["first"]["chunks"] == len(received.frames["first"])


def test_flush_speaks_what_was_sent_and_the_utterance_goes_on(serve_cluster) -> None:
    received = Received()
    # A seed with which the twin speaks the flushed phrase: after so little text upstream's last
    # loop may sample end-of-speech at once (with seeds 2 and 5 it does), and no audio comes.
    with open_socket(serve_cluster, seed=7) as socket:
        send(socket, "text", text="Hello there")
        send(socket, "flush")
        while not received.frames:  # the flushed phrase is spoken without more text
            received.take(socket.recv(timeout=120))
        send(socket, "text", text=", and more after the flush.")
        send(socket, "end")
        receive_until(socket, received)
    chunks = received.of("chunk")
    assert "".join(chunk["text"] for chunk in chunks) == "Hello there, and more after the flush."


def test_close_ends_the_session_after_everything_is_spoken(serve_cluster) -> None:
    received = Received()
    with open_socket(serve_cluster, seed=4) as socket:
        send(socket, "text", text="Speak this, then close.")
        socket.send(json.dumps({"type": "close"}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.take(socket.recv(timeout=120))
    assert closed.value.rcvd.code == 1000
    assert received.of("done") and received.audio()


#: The issue's bound on how long work goes on for a closed socket or a cancelled utterance.
STOP_WITHIN_S = 1.0


def llm_stats(serve_cluster: dict) -> Callable[[], dict]:
    from ray import serve

    llm = serve.get_deployment_handle("SpeechTokenLLM", app_name=serve_cluster["app_name"])
    return lambda: llm.stats.remote().result()


def seconds_until_idle(stats: Callable[[], dict], since: float) -> float:
    """Seconds from `since` until the LLM decodes no sequence (the tests run one at a time)."""
    while stats()["active_sequences"]:
        assert time.monotonic() - since < 30, "the LLM is still decoding"
        time.sleep(0.02)
    return time.monotonic() - since


def test_closing_the_socket_stops_its_work(serve_cluster) -> None:
    stats = llm_stats(serve_cluster)
    socket = open_socket(serve_cluster, seed=6)
    send(socket, "text", text=TEXT * 5)
    received = Received()
    while not received.frames:
        received.take(socket.recv(timeout=120))
    assert stats()["active_sequences"] >= 1
    socket.close()
    stopped = seconds_until_idle(stats, time.monotonic())
    print(f"LLM sequence left {stopped:.3f} s after the socket closed")
    assert stopped < STOP_WITHIN_S


def test_cancel_stops_the_work_of_its_utterance_and_the_socket_stays_open(serve_cluster) -> None:
    stats = llm_stats(serve_cluster)
    received = Received()
    with open_socket(serve_cluster, seed=8) as socket:
        send(socket, "text", "long", text=TEXT * 5)  # no end: the utterance would go on as text comes
        while "long" not in received.frames:
            received.take(socket.recv(timeout=120))
        assert stats()["active_sequences"] >= 1
        generated = stats()["tokens_generated"]
        send(socket, "cancel", "long")
        cancelled_at = time.monotonic()
        while not received.of("done", "long"):
            received.take(socket.recv(timeout=30))
        to_done = time.monotonic() - cancelled_at
        stopped = seconds_until_idle(stats, cancelled_at)
        frames = len(received.frames["long"])
        # Nothing more of it arrives, and the socket serves the next utterance.
        send(socket, "text", "next", text="Still here.")
        send(socket, "end", "next")
        receive_until(socket, received, done=2)
    print(f"cancel: done after {to_done:.3f} s, LLM sequence left after {stopped:.3f} s, "
          f"{stats()['tokens_generated'] - generated} tokens after the cancel")
    [done] = received.of("done", "long")
    assert done["cancelled"] is True and done["chunks"] == frames == len(received.frames["long"])
    assert to_done < STOP_WITHIN_S and stopped < STOP_WITHIN_S
    assert received.audio("next")


@pytest.mark.parametrize(("first_message", "code", "close_code"), [
    ({"type": "config", "voice_id": "no_such_voice"}, "voice_not_found", 1008),
    ({"type": "config", "voice_id": VOICE, "sample_rate": 44100}, "validation_error", 1008),
    ({"type": "config", "voice_id": VOICE, "mode": "instruct"}, "validation_error", 1008),
    ({"type": "text", "text": "no config first"}, "validation_error", 1008),
    ("not json", "invalid_request", 1007),
    (b"\x00\x01", "invalid_request", 1003),
])
def test_errors_before_audio_are_an_event_then_a_close(serve_cluster, first_message, code, close_code) -> None:
    with connect(ws_url(serve_cluster), open_timeout=30) as socket:
        socket.send(json.dumps(first_message) if isinstance(first_message, dict) else first_message)
        error = json.loads(socket.recv(timeout=60))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=60)
    assert error["type"] == "error" and error["error"] == code
    assert error["details"]["path"] == PATH and error["details"]["request_id"] and error["message"]
    assert closed.value.rcvd.code == close_code


def test_an_utterance_error_leaves_the_socket_open(serve_cluster) -> None:
    received = Received()
    with open_socket(serve_cluster, seed=1) as socket:
        send(socket, "end", "never-started")
        error = received.take(socket.recv(timeout=60))
        assert error["type"] == "error" and error["error"] == "invalid_request"
        assert error["details"]["context_id"] == "never-started"
        received.events.clear()
        send(socket, "text", text="Still working.")
        send(socket, "end")
        receive_until(socket, received)
    assert received.audio()
