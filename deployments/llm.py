"""LLM deployment: speech-token generation, streamed out token by token.

One decoding thread per replica advances every active sequence by one token per iteration: the
sequences' one-token steps share one batched forward (continuous batching: sequences join and
leave between steps), the model copy sees one forward at a time (concurrent forwards into one
transformers model are not safe), and a cancelled request stops being decoded at the next step.
The thread hands tokens to the event loop without waiting for it, so a busy machine does not add
a thread hand-off (a scheduling delay under load) to every token.

Bistream sequences (text streamed in while they are decoded) decode in the same batch. Their text
and their consumer's acknowledgements arrive through the application's inbox actor, pulled by
this replica; a sequence waiting for text, or too far ahead of its consumer, sits out the steps
until it can go on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve

from deployments.bistream_inbox import bistream_inbox_actor
from deployments.metrics import StageLoad, metric
from deployments.model_stage import core_budget, forward_pass, load_stage, precision
from tts_core.settings import Settings
from tts_core.wire import BistreamInput, BistreamRequest, BistreamTokens, SpeechTokenRequest
from tts_model.llm_decode import BistreamState, DecodeState, SpeechTokenDecoder

logger = logging.getLogger("ray.serve")

#: What a sequence's queue receives: (tokens, text tokens fed so far), an error, or None once finished.
_Item = tuple[list[int], int] | BaseException | None
#: Sequences from which a one-token decoding step has the arithmetic to use more than one core.
COMPUTE_BOUND_BATCH = 4
#: How long one pull from the inbox waits for a message before asking again.
INBOX_WAIT_S = 30.0


@dataclass
class _Sequence:
    sequence_id: int
    request: SpeechTokenRequest | BistreamRequest
    queue: asyncio.Queue
    #: Tokens are handed over as they come; otherwise all at once when the sequence finishes.
    stream: bool
    #: Set by the decoding thread when the sequence joins.
    state: DecodeState | None = None
    #: Bistream: speech tokens whose audio the consumer has taken (flow control).
    acked: int = 0


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class SpeechTokenLLM:
    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["llm"])
        self.decoder = SpeechTokenDecoder(self.model.llm, self.model.sampling_params)
        self.budget = core_budget(settings)
        # The inbox actor is looked up when the first bistream sequence comes.
        self.app_name, self.inbox = settings.app_name, None
        self.ids = itertools.count()
        # Shared with the decoding thread, under `changed`: who joins, who left, what arrived.
        self.changed = threading.Condition()
        self.joining: list[_Sequence] = []
        self.leaving: set[int] = set()
        self.arrived: dict[int, list[BistreamInput]] = {}
        # Owned by the decoding thread.
        self.sequences: dict[int, _Sequence] = {}
        self.tokens_generated = 0
        self.load = StageLoad("llm")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._decode_forever, name="llm-decode", daemon=True)
        self.thread.start()

    async def generate(self, request: SpeechTokenRequest) -> AsyncIterator[list[int]]:
        """Yield the speech tokens of one text segment as they are sampled.

        Each item holds every token ready at that moment: a consumer that falls behind gets
        them in one message instead of paying a stream hop per token.
        """
        async for ready, _ in self._tokens(self._join(request, stream=True)):
            yield ready

    async def generate_all(self, request: SpeechTokenRequest) -> list[int]:
        """All speech tokens of one segment in one reply (for callers that do not stream)."""
        return [token async for ready, _ in self._tokens(self._join(request, stream=False)) for token in ready]

    async def generate_bistream(self, request: BistreamRequest) -> AsyncIterator[BistreamTokens]:
        """Yield the speech tokens of a sequence whose text is posted to the inbox under `request.key`
        while it runs (with `text_end` once it is complete); it ends after the text has been spoken."""
        if self.inbox is None:
            self.inbox = bistream_inbox_actor(self.app_name)
        sequence = self._join(request, stream=True)
        puller = asyncio.create_task(self._pull_inbox(sequence))
        try:
            async for ready, text_fed in self._tokens(sequence):
                yield BistreamTokens(tokens=ready, text_tokens_fed=text_fed)
        finally:
            puller.cancel()

    def _join(self, request: SpeechTokenRequest | BistreamRequest, stream: bool) -> _Sequence:
        self.loop = asyncio.get_running_loop()
        sequence = _Sequence(next(self.ids), request, asyncio.Queue(), stream)
        with self.changed:
            self.joining.append(sequence)
            self.changed.notify()
        return sequence

    async def _tokens(self, sequence: _Sequence) -> AsyncIterator[tuple[list[int], int]]:
        try:
            finished = False
            while not finished:
                items = [await sequence.queue.get()]
                while not sequence.queue.empty():
                    items.append(sequence.queue.get_nowait())
                if finished := items[-1] is None:
                    items.pop()
                if errors := [item for item in items if isinstance(item, BaseException)]:
                    raise errors[0]
                if ready := [token for tokens, _ in items for token in tokens]:
                    yield ready, items[-1][1]
        finally:
            # Also reached when the caller goes away: the thread stops stepping this sequence.
            with self.changed:
                self.leaving.add(sequence.sequence_id)
                self.changed.notify()

    async def _pull_inbox(self, sequence: _Sequence) -> None:
        """Hand the sequence's inbox messages to the decoding thread until the sequence ends."""
        while True:
            try:
                messages = await self.inbox.take.remote(sequence.request.key, INBOX_WAIT_S)
            except Exception as exc:  # the inbox is gone: this sequence cannot get its text
                logger.exception("bistream inbox unavailable")
                sequence.queue.put_nowait(exc)
                return
            if messages is None:  # discarded by its sender, who has gone away: stop decoding it now
                sequence.queue.put_nowait(None)
                return
            if messages:
                with self.changed:
                    self.arrived.setdefault(sequence.sequence_id, []).extend(messages)
                    self.changed.notify()

    def _decode_forever(self) -> None:
        runnable = False
        while True:
            with self.changed:
                while not self.joining and not self.leaving and not self.arrived and not runnable:
                    self.changed.wait()
                joining, self.joining = self.joining, []
                leaving, self.leaving = self.leaving, set()
                arrived, self.arrived = self.arrived, {}
            for sequence_id in leaving:
                self.sequences.pop(sequence_id, None)
            deliveries: list[tuple[asyncio.Queue, _Item]] = []
            for sequence in joining:
                if sequence.sequence_id in leaving:
                    continue
                try:
                    request = sequence.request
                    with forward_pass(self.budget, yields=True):
                        sequence.state = (self.decoder.start_bistream(request)
                                          if isinstance(request, BistreamRequest) else self.decoder.start(request))
                    self.sequences[sequence.sequence_id] = sequence
                except Exception as exc:  # e.g. a prompt the model cannot take: fail this request only
                    logger.exception("speech-token decoding failed to start")
                    deliveries.append((sequence.queue, exc))
            for sequence_id, messages in arrived.items():
                if (sequence := self.sequences.get(sequence_id)) is not None:
                    self._take_messages(sequence, messages, deliveries)
            ready = [sequence for sequence in self.sequences.values() if self._can_step(sequence)]
            runnable = bool(ready)
            if ready:
                with forward_pass(self.budget, self._thread_limit(ready), yields=True):
                    deliveries += self._step_all(ready)
            deliveries += self._remove_finished()
            if len(self.sequences) != self.load.depth:
                self.load.set(len(self.sequences))
            if deliveries:
                self.loop.call_soon_threadsafe(_deliver, deliveries)

    def _take_messages(self, sequence: _Sequence, messages: list[BistreamInput],
                       deliveries: list[tuple[asyncio.Queue, _Item]]) -> None:
        try:
            for message in messages:
                if message.acked_tokens is not None:
                    sequence.acked = max(sequence.acked, message.acked_tokens)
                if message.text_token or message.text_end:
                    self.decoder.feed(sequence.state, message.text_token, message.text_end)
        except Exception as exc:  # e.g. text after the end of the text
            deliveries.append((sequence.queue, exc))
            del self.sequences[sequence.sequence_id]

    def _can_step(self, sequence: _Sequence) -> bool:
        state, request = sequence.state, sequence.request
        if (isinstance(state, BistreamState) and request.ahead_tokens is not None
                and state.speech_tokens - sequence.acked >= request.ahead_tokens):
            return False  # its consumer is behind: wait for its acknowledgement
        try:
            return self.decoder.ready(state)
        except Exception as exc:  # e.g. text the model cannot embed: this sequence alone fails
            state.fail(exc)
            return False

    @staticmethod
    def _thread_limit(batch: list[_Sequence]) -> int | None:
        """One core for a step of one-token decodes of a few sequences, the budget's share otherwise.

        Such a step reads every weight of the model for a few multiply-adds each: it is bound by
        memory bandwidth, and a second thread gains little (about 10% on a quiet two-core machine,
        nothing or a loss once other processes take a core for moments), while the core it would
        hold is what the flow decoder, compute-bound, runs faster with. A prefill, or a batch of
        many sequences, has the arithmetic to use every core.
        """
        prefilling = any(sequence.state.cache is None or sequence.state.lm_input.shape[1] != 1 for sequence in batch)
        return None if prefilling or len(batch) >= COMPUTE_BOUND_BATCH else 1

    def _step_all(self, batch: list[_Sequence]) -> list[tuple[asyncio.Queue, _Item]]:
        """One token for every ready sequence; returns what each sequence's queue gets.

        The decoder fails a broken sequence alone (the others step on as if it had never joined);
        should a step fail as a whole, this batch's requests fail and the thread serves the next ones.
        """
        try:
            tokens = self.decoder.step_batch([sequence.state for sequence in batch])
        except Exception as exc:
            logger.exception("speech-token decoding step failed")
            tokens = [None] * len(batch)
            for sequence in batch:
                sequence.state.fail(exc)
        deliveries: list[tuple[asyncio.Queue, _Item]] = []
        emitted = 0
        for sequence, token in zip(batch, tokens, strict=True):
            state = sequence.state
            if state.error is not None:
                logger.error("speech-token decoding failed for sequence %d", sequence.sequence_id,
                             exc_info=state.error)
                deliveries.append((sequence.queue, state.error))
                del self.sequences[sequence.sequence_id]
            elif token is not None:
                emitted += 1
                if sequence.stream:
                    deliveries.append((sequence.queue, ([token], self._text_fed(state))))
        if emitted:
            self.tokens_generated += emitted
            metric("cosyvoice_llm_tokens_total").inc(emitted)
        return deliveries

    def _remove_finished(self) -> list[tuple[asyncio.Queue, _Item]]:
        deliveries: list[tuple[asyncio.Queue, _Item]] = []
        for sequence_id, sequence in list(self.sequences.items()):
            if sequence.state.error is not None:
                deliveries.append((sequence.queue, sequence.state.error))
                del self.sequences[sequence_id]
            elif sequence.state.finished:
                if not sequence.stream:
                    deliveries.append((sequence.queue, (list(sequence.state.out_tokens), 0)))
                deliveries.append((sequence.queue, None))
                del self.sequences[sequence_id]
        return deliveries

    def _text_fed(self, state: DecodeState) -> int:
        return self.decoder.text_fed(state) if isinstance(state, BistreamState) else 0

    def precision(self) -> str:
        """The dtype this replica decodes in (`dtype: auto` resolves per device)."""
        return precision(self.model)

    def stats(self) -> dict[str, int]:
        """Tokens generated by this replica so far, and sequences being decoded now."""
        with self.changed:
            return {"tokens_generated": self.tokens_generated,
                    "active_sequences": len(self.sequences) + len(self.joining)}

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("LLM decoding thread stopped")


def _deliver(deliveries: list[tuple[asyncio.Queue, _Item]]) -> None:
    for queue, item in deliveries:
        queue.put_nowait(item)
