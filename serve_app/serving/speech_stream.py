"""The speech WebSocket's logic: text in as it is written, audio out as soon as it exists.

One session per socket. Each utterance (`context_id`) has three tasks: a feeder releases its text
at word boundaries, has the frontend normalise and tokenise each piece, and posts the tokens to
the inbox of its LLM sequence; a producer runs the pipeline's bistream synthesis and encodes the
chunks; one sender per socket sends the utterances' audio in the order they were started. A
`flush` ends the current phrase (its LLM sequence speaks all it has); later text of the same
utterance starts the next phrase, spoken after it.

Bounded memory whoever the client is: a Ray stream has no back-pressure, so the sender paces
audio to at most `AUDIO_LEAD_S` ahead of real-time playback and acknowledges each chunk it sends
to the LLM sequence, which never runs more than `AHEAD_TOKENS` speech tokens past the last
acknowledgement. The text of an utterance and the number of open utterances are capped.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from serve_app.api.errors import ApiError, error_body, request_id
from serve_app.api.ws_protocol import (
    ChunkEvent,
    CloseMessage,
    ContextMessage,
    DoneEvent,
    ErrorEvent,
    StartedEvent,
    StreamConfig,
    TextMessage,
)
from serve_app.serving.state import ServiceState
from serve_app.serving.synthesis import check_output_format, synthesis_failed
from tts_core.limits import MAX_OPEN_UTTERANCES, MAX_STREAMED_TEXT_CHARS
from tts_core.pcm_stream import stream_encoder
from tts_core.text_stream import TextTokenMap, release_point
from tts_core.wire import BistreamInput, BistreamJob, VoiceFeatures

logger = logging.getLogger("ray.serve")

PATH = "/api/v1/ws/synthesize"
#: Audio is sent at most this far ahead of real-time playback.
AUDIO_LEAD_S = 20.0
#: An LLM sequence runs at most this many speech tokens (6 s of audio) past what has been sent.
AHEAD_TOKENS = 150
#: A socket that sends no config this long after opening is closed.
CONFIG_TIMEOUT_S = 30.0
#: RFC 6455 close codes.
NORMAL, UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION, INTERNAL_ERROR = 1000, 1003, 1007, 1008, 1011

_client_message = TypeAdapter(TextMessage | ContextMessage | CloseMessage)


class StreamError(Exception):
    """An error event (the API's error shape); with `close_code` the session ends after it."""

    def __init__(self, code: str, message: str, close_code: int | None = None, context_id: str | None = None,
                 **details: Any):
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code
        self.details = {**({"context_id": context_id} if context_id else {}), **details}

    @classmethod
    def from_api_error(cls, exc: ApiError, close_code: int | None = None,
                       context_id: str | None = None) -> StreamError:
        return cls(exc.code, exc.message, close_code, context_id, **exc.details)


def validation_error(exc: ValidationError, close_code: int | None = POLICY_VIOLATION) -> StreamError:
    errors = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
    return StreamError("validation_error", f"Message validation failed: {summary}", close_code, errors=errors)


@dataclass
class _Phrase:
    """Text of one utterance between flushes: one LLM bistream sequence."""

    key: str
    index: int
    tokens: TextTokenMap
    #: Character offset in the utterance's text where the phrase ends, once its text is complete.
    end: int | None = None


@dataclass
class _Utterance:
    context_id: str
    text: str = ""
    ended: bool = False
    cancelled: bool = False
    #: Text pieces, `flush` and `end`, in arrival order, for the feeder.
    inputs: asyncio.Queue = field(default_factory=asyncio.Queue)
    #: Phrases for the producer, None after the last.
    phrases: asyncio.Queue = field(default_factory=asyncio.Queue)
    #: Encoded chunks for the sender, None after the last; bounded so a producer waits for the sender.
    audio: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=4))
    keys: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    sent_seconds: float = 0.0
    sent_chunks: int = 0


@dataclass
class _Audio:
    event: ChunkEvent
    data: bytes
    #: The phrase's inbox key and its speech tokens so far, to acknowledge once sent.
    key: str | None
    tokens: int


class SpeechStreamSession:
    def __init__(self, websocket: WebSocket, services: ServiceState):
        self.websocket, self.services = websocket, services
        self.session = uuid.uuid4().hex[:12]
        self.config: StreamConfig | None = None
        self.voice: VoiceFeatures | None = None
        self.seed = 0
        self.utterances: dict[str, _Utterance] = {}
        self.playing: deque[_Utterance] = deque()
        self.play_changed = asyncio.Condition()
        self.send_lock = asyncio.Lock()
        self.closing = False
        self.phrase_numbers = itertools.count()
        self.clock = 0.0
        self.sender: asyncio.Task | None = None

    async def run(self) -> None:
        await self.websocket.accept()
        try:
            await self._configure()
            self.sender = asyncio.create_task(self._send_audio())
            while (message := await self._receive()) is not None:
                try:
                    await self._handle(message)
                except StreamError as exc:
                    if exc.close_code is not None:
                        raise
                    await self._send_error(exc)
        except StreamError as exc:
            await self._send_error(exc)
            await self._close(exc.close_code)
        except WebSocketDisconnect:
            pass
        except Exception:
            logger.exception("request %s: speech stream failed", request_id(self.websocket.scope))
            await self._send_error(StreamError("internal_server_error", "Internal server error; the server log has "
                                               "the details under this request's id."))
            await self._close(INTERNAL_ERROR)
        finally:
            self._stop_all()

    # --- receiving ------------------------------------------------------------------------------

    async def _receive(self) -> dict | None:
        """The next client message as a JSON object, or None once the client is gone."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("text") is None:
            raise StreamError("invalid_request", "Messages are JSON text frames; binary frames are not accepted",
                              UNSUPPORTED_DATA)
        try:
            parsed = json.loads(message["text"])
        except json.JSONDecodeError:
            raise StreamError("invalid_request", "Messages must be JSON objects", INVALID_PAYLOAD) from None
        if not isinstance(parsed, dict):
            raise StreamError("invalid_request", "Messages must be JSON objects", INVALID_PAYLOAD)
        return parsed

    async def _configure(self) -> None:
        try:
            first = await asyncio.wait_for(self._receive(), CONFIG_TIMEOUT_S)
        except TimeoutError:
            raise StreamError("invalid_request", f"No config message within {CONFIG_TIMEOUT_S:.0f} s",
                              POLICY_VIOLATION) from None
        if first is None:
            raise WebSocketDisconnect()
        try:
            self.config = StreamConfig.model_validate(first)
        except ValidationError as exc:
            raise validation_error(exc) from None
        try:
            self.voice = await self.services.voices.features(self.config.voice_id)
            check_output_format(self.config.format if self.config.format != "mulaw" else "pcm", stream=True)
        except ApiError as exc:
            raise StreamError.from_api_error(exc, POLICY_VIOLATION) from None
        self.seed = secrets.randbelow(2**31) if self.config.seed is None else self.config.seed

    async def _handle(self, raw: dict) -> None:
        try:
            message = _client_message.validate_python(raw)
        except ValidationError as exc:
            raise validation_error(exc) from None
        if isinstance(message, CloseMessage):
            self.closing = True
            for utterance in self.utterances.values():
                self._end(utterance)
            async with self.play_changed:
                self.play_changed.notify_all()
            return
        utterance = self.utterances.get(message.context_id)
        if isinstance(message, TextMessage):
            await self._add_text(utterance, message)
        elif message.type == "cancel":
            if utterance is not None:  # an utterance that is already over has nothing to cancel
                await self._cancel(utterance)
        elif utterance is None or utterance.ended:
            raise StreamError("invalid_request", f"No open utterance '{message.context_id}' to {message.type}",
                              context_id=message.context_id)
        elif message.type == "flush":
            utterance.inputs.put_nowait(("flush", ""))
        else:
            self._end(utterance)

    async def _add_text(self, utterance: _Utterance | None, message: TextMessage) -> None:
        if utterance is None:
            utterance = await self._start(message.context_id)
        elif utterance.ended:
            raise StreamError("invalid_request", f"Utterance '{message.context_id}' has ended; start a new one "
                              "with another context_id", context_id=message.context_id)
        if len(utterance.text) + len(message.text) > MAX_STREAMED_TEXT_CHARS:
            await self._send_error(StreamError("invalid_request", "An utterance holds at most "
                                               f"{MAX_STREAMED_TEXT_CHARS} characters", context_id=message.context_id))
            await self._cancel(utterance)
            return
        utterance.text += message.text
        utterance.inputs.put_nowait(("text", message.text))

    async def _start(self, context_id: str) -> _Utterance:
        if self.closing:
            raise StreamError("invalid_request", "The session is closing: no new utterance starts",
                              context_id=context_id)
        if sum(not u.ended for u in self.utterances.values()) >= MAX_OPEN_UTTERANCES:
            raise StreamError("invalid_request", f"At most {MAX_OPEN_UTTERANCES} utterances may be open at once",
                              context_id=context_id)
        utterance = self.utterances[context_id] = _Utterance(context_id)
        await self._send_json(StartedEvent(context_id=context_id, format=self.config.format,
                                           sample_rate=self.config.sample_rate, seed=self.seed))
        utterance.tasks = [asyncio.create_task(self._feed(utterance)), asyncio.create_task(self._produce(utterance))]
        async with self.play_changed:
            self.playing.append(utterance)
            self.play_changed.notify_all()
        return utterance

    def _end(self, utterance: _Utterance) -> None:
        if not utterance.ended:
            utterance.ended = True
            utterance.inputs.put_nowait(("end", ""))

    async def _cancel(self, utterance: _Utterance) -> None:
        """Stop an utterance's work and audio at once; the socket stays open."""
        if utterance.cancelled:
            return
        utterance.cancelled = utterance.ended = True
        self._stop(utterance)
        while not utterance.audio.empty():
            utterance.audio.get_nowait()
        utterance.audio.put_nowait(None)
        await self._send_json(DoneEvent(context_id=utterance.context_id, cancelled=True,
                                        duration=round(utterance.sent_seconds, 3), chunks=utterance.sent_chunks))

    def _stop(self, utterance: _Utterance) -> None:
        for task in utterance.tasks:
            if task is not asyncio.current_task():  # an utterance's own task that fails finishes by itself
                task.cancel()
        for key in utterance.keys:
            self.services.inbox.discard.remote(key)

    def _stop_all(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
        for utterance in self.utterances.values():
            self._stop(utterance)

    # --- text in --------------------------------------------------------------------------------

    async def _feed(self, utterance: _Utterance) -> None:
        """Release text at word boundaries to the current phrase's LLM sequence, phrase by phrase."""
        phrase: _Phrase | None = None
        pending, released = "", 0  # text not yet released; characters released so far
        try:
            while True:
                events = [await utterance.inputs.get()]
                while not utterance.inputs.empty():
                    events.append(utterance.inputs.get_nowait())
                for kind, text in events:
                    if kind == "text":
                        pending += text
                        continue
                    phrase, pending, released = await self._release(utterance, phrase, pending, released, final=True)
                    if kind == "end":
                        utterance.phrases.put_nowait(None)
                        return
                phrase, pending, released = await self._release(utterance, phrase, pending, released, final=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._fail(utterance, exc)

    async def _release(self, utterance: _Utterance, phrase: _Phrase | None, pending: str, released: int,
                       final: bool) -> tuple[_Phrase | None, str, int]:
        cut = release_point(pending, final)
        piece, pending = pending[:cut], pending[cut:]
        if piece.strip():
            if phrase is None:
                start = released + len(piece) - len(piece.lstrip())
                phrase = _Phrase(key=f"{self.session}-{next(self.phrase_numbers)}", index=len(utterance.keys),
                                 tokens=TextTokenMap(start))
                utterance.keys.append(phrase.key)
                utterance.phrases.put_nowait(phrase)
                piece_text, space_before = piece.lstrip(), False
            else:
                piece_text = piece
                space_before = piece[:1].isspace() or utterance.text[released - 1:released].isspace()
            tokens = await self.services.frontend.streamed_text_tokens.remote(piece_text.strip(), space_before)
            phrase.tokens.add(len(tokens), released + len(piece.rstrip()))
            if tokens:
                await self.services.inbox.put.remote(phrase.key, BistreamInput(text_token=tokens))
        released += len(piece)
        if final and phrase is not None:
            phrase.end = phrase.tokens.ends[-1] if phrase.tokens.ends else phrase.tokens.start
            await self.services.inbox.put.remote(phrase.key, BistreamInput(text_end=True))
            phrase = None
        return phrase, pending, released

    # --- audio out ------------------------------------------------------------------------------

    async def _produce(self, utterance: _Utterance) -> None:
        """Synthesize the utterance's phrases one after another, encoding each chunk for the sender."""
        config = self.config
        encoder = stream_encoder(config.format, config.sample_rate, self.services.synthesis.sample_rate)
        index, spoken, encoded = 0, 0, 0
        try:
            while (phrase := await utterance.phrases.get()) is not None:
                job = BistreamJob(key=phrase.key, mode=config.mode, voice=self.voice,
                                  instruct_text=config.instruct_text, seed=self.seed, segment=phrase.index,
                                  ahead_tokens=AHEAD_TOKENS)
                response = self.services.pipeline.options(stream=True).synthesize_bistream.remote(job)
                try:
                    async for chunk in response:
                        end = phrase.end if chunk.segment_done else phrase.tokens.char_at(chunk.text_tokens)
                        end = max(spoken, end)
                        data = encoder.encode(chunk.pcm)
                        seconds, encoded = (encoder.samples - encoded) / config.sample_rate, encoder.samples
                        event = self._chunk_event(utterance, index, data, spoken, end, seconds)
                        await utterance.audio.put(_Audio(event, data, phrase.key, chunk.tokens))
                        index, spoken = index + 1, end
                finally:
                    response.cancel()
                    self.services.inbox.discard.remote(phrase.key)
            if tail := encoder.flush():  # the resampler's last samples, the encoder's last frames
                seconds = (encoder.samples - encoded) / config.sample_rate
                event = self._chunk_event(utterance, index, tail, spoken, spoken, seconds)
                await utterance.audio.put(_Audio(event, tail, None, 0))
            await utterance.audio.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._fail(utterance, exc)

    @staticmethod
    def _chunk_event(utterance: _Utterance, index: int, data: bytes, start: int, end: int,
                     seconds: float) -> ChunkEvent:
        return ChunkEvent(context_id=utterance.context_id, index=index, bytes=len(data), duration=round(seconds, 4),
                          text_start=start, text_end=end, text=utterance.text[start:end])

    async def _fail(self, utterance: _Utterance, exc: Exception) -> None:
        """An utterance that cannot go on: its error, then its end; the others carry on."""
        error = synthesis_failed(exc)
        if error.status_code >= 500:
            logger.error("request %s: streamed synthesis failed", request_id(self.websocket.scope), exc_info=exc)
        await self._send_error(StreamError.from_api_error(error, context_id=utterance.context_id))
        await self._cancel(utterance)

    async def _send_audio(self) -> None:
        """Send the utterances' audio, one utterance after another in the order they started; close
        the socket once the session is closing and all is sent."""
        try:
            await self._send_utterances()
        except asyncio.CancelledError:
            raise
        except Exception:  # the client went away mid-send; the receiving side stops the rest
            logger.debug("sending audio stopped", exc_info=True)
            return
        await self._close(NORMAL)

    async def _send_utterances(self) -> None:
        while (utterance := await self._next_utterance()) is not None:
            while (audio := await utterance.audio.get()) is not None:
                await self._pace(audio.event.duration)
                async with self.send_lock:
                    if utterance.cancelled:
                        break
                    await self.websocket.send_text(audio.event.model_dump_json())
                    await self.websocket.send_bytes(audio.data)
                utterance.sent_seconds += audio.event.duration
                utterance.sent_chunks += 1
                if audio.key is not None:
                    await self.services.inbox.put.remote(audio.key, BistreamInput(acked_tokens=audio.tokens))
            if not utterance.cancelled:
                await self._send_json(DoneEvent(context_id=utterance.context_id, cancelled=False,
                                                duration=round(utterance.sent_seconds, 3),
                                                chunks=utterance.sent_chunks))
            del self.utterances[utterance.context_id]

    async def _next_utterance(self) -> _Utterance | None:
        async with self.play_changed:
            while not self.playing:
                if self.closing:
                    return None
                await self.play_changed.wait()
            return self.playing.popleft()

    async def _pace(self, seconds: float) -> None:
        """Keep the audio sent at most AUDIO_LEAD_S ahead of real-time playback."""
        now = asyncio.get_running_loop().time()
        self.clock = max(self.clock, now)  # after a pause, playback restarts now
        if (ahead := self.clock - now) > AUDIO_LEAD_S:
            await asyncio.sleep(ahead - AUDIO_LEAD_S)
        self.clock += seconds

    async def _send_json(self, event: BaseModel) -> None:
        async with self.send_lock:
            await self.websocket.send_text(event.model_dump_json())

    async def _send_error(self, error: StreamError) -> None:
        try:
            body = error_body(self.websocket.scope, error.code, error.message, **error.details)
            await self._send_json(ErrorEvent(**body))
        except Exception:  # the client is gone
            logger.debug("could not send an error event", exc_info=True)

    async def _close(self, code: int) -> None:
        try:
            await self.websocket.close(code)
        except Exception:  # already closed by the client
            logger.debug("could not close the socket", exc_info=True)
