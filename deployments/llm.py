"""LLM deployment: speech-token generation, streamed out token by token.

One decoding thread per replica advances every active sequence by one token per iteration: the
sequences' one-token steps share one batched forward (continuous batching: sequences join and
leave between steps), the model copy sees one forward at a time (concurrent forwards into one
transformers model are not safe), and a cancelled request stops being decoded at the next step.
The thread hands tokens to the event loop without waiting for it, so a busy machine does not add
a thread hand-off (a scheduling delay under load) to every token.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve

from deployments.metrics import StageLoad, metric
from deployments.model_stage import core_budget, forward_pass, load_stage, precision
from tts_core.settings import Settings
from tts_core.wire import SpeechTokenRequest
from tts_model.llm_decode import DecodeState, SpeechTokenDecoder

logger = logging.getLogger("ray.serve")

#: What a sequence's queue receives: tokens, an error, or None once it is finished.
_Item = list[int] | BaseException | None


@dataclass
class _Sequence:
    sequence_id: int
    request: SpeechTokenRequest
    queue: asyncio.Queue
    #: Tokens are handed over as they come; otherwise all at once when the sequence finishes.
    stream: bool
    #: Set by the decoding thread when the sequence joins.
    state: DecodeState | None = None


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class SpeechTokenLLM:
    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["llm"])
        self.decoder = SpeechTokenDecoder(self.model.llm, self.model.sampling_params)
        self.budget = core_budget(settings)
        self.ids = itertools.count()
        # Shared with the decoding thread, under `changed`: who joins, who left.
        self.changed = threading.Condition()
        self.joining: list[_Sequence] = []
        self.leaving: set[int] = set()
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
        async for ready in self._tokens(request, stream=True):
            yield ready

    async def generate_all(self, request: SpeechTokenRequest) -> list[int]:
        """All speech tokens of one segment in one reply (for callers that do not stream)."""
        return [token async for ready in self._tokens(request, stream=False) for token in ready]

    async def _tokens(self, request: SpeechTokenRequest, stream: bool) -> AsyncIterator[list[int]]:
        self.loop = asyncio.get_running_loop()
        sequence_id, queue = next(self.ids), asyncio.Queue()
        with self.changed:
            self.joining.append(_Sequence(sequence_id, request, queue, stream))
            self.changed.notify()
        try:
            finished = False
            while not finished:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                if finished := items[-1] is None:
                    items.pop()
                if errors := [item for item in items if isinstance(item, BaseException)]:
                    raise errors[0]
                if ready := [token for tokens in items for token in tokens]:
                    yield ready
        finally:
            # Also reached when the caller goes away: the thread stops stepping this sequence.
            with self.changed:
                self.leaving.add(sequence_id)
                self.changed.notify()

    def _decode_forever(self) -> None:
        while True:
            with self.changed:
                while not self.joining and not self.sequences and not self.leaving:
                    self.changed.wait()
                joining, self.joining = self.joining, []
                leaving, self.leaving = self.leaving, set()
            for sequence_id in leaving:
                self.sequences.pop(sequence_id, None)
            deliveries: list[tuple[asyncio.Queue, _Item]] = []
            for sequence in joining:
                if sequence.sequence_id in leaving:
                    continue
                try:
                    with forward_pass(self.budget):
                        sequence.state = self.decoder.start(sequence.request)
                    self.sequences[sequence.sequence_id] = sequence
                except Exception as exc:  # e.g. a prompt the model cannot take: fail this request only
                    logger.exception("speech-token decoding failed to start")
                    deliveries.append((sequence.queue, exc))
            if self.sequences:
                self.load.set(len(self.sequences))
                with forward_pass(self.budget):
                    deliveries += self._step_all()
                if not self.sequences:
                    self.load.set(0)
            if deliveries:
                self.loop.call_soon_threadsafe(_deliver, deliveries)

    def _step_all(self) -> list[tuple[asyncio.Queue, _Item]]:
        """One token for every active sequence; returns what each sequence's queue gets.

        The decoder fails a broken sequence alone (the others step on as if it had never joined);
        should a step fail as a whole, this batch's requests fail and the thread serves the next ones.
        """
        batch = list(self.sequences.values())
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
                continue
            if token is not None:
                emitted += 1
                if sequence.stream:
                    deliveries.append((sequence.queue, [token]))
            if state.finished:
                if not sequence.stream:
                    deliveries.append((sequence.queue, list(state.out_tokens)))
                deliveries.append((sequence.queue, None))
                del self.sequences[sequence.sequence_id]
        if emitted:
            self.tokens_generated += emitted
            metric("cosyvoice_llm_tokens_total").inc(emitted)
        return deliveries

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
