"""LLM deployment: speech-token generation, streamed out token by token.

One scheduler task per replica advances every active sequence by one token per iteration, on a
single worker thread: the sequences' one-token steps share one batched forward (continuous
batching: sequences join and leave between steps), the model copy sees one forward at a time
(concurrent forwards into one transformers model are not safe), and a cancelled request stops
being decoded at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ray import serve

from deployments.metrics import StageLoad, metric
from deployments.model_stage import load_stage
from serve_app.settings import Settings
from tts_model.llm_decode import DecodeState, SpeechTokenDecoder, SpeechTokenRequest

logger = logging.getLogger("ray.serve")


@dataclass
class _Sequence:
    state: DecodeState
    queue: asyncio.Queue


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class SpeechTokenLLM:
    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["llm"])
        self.decoder = SpeechTokenDecoder(self.model.llm, self.model.sampling_params)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-step")
        self.sequences: dict[int, _Sequence] = {}
        self.ids = itertools.count()
        self.wakeup: asyncio.Event | None = None
        self.scheduler: asyncio.Task | None = None
        self.tokens_generated = 0
        self.load = StageLoad("llm")

    def _ensure_scheduler(self) -> None:
        if self.scheduler is None or self.scheduler.done():
            self.wakeup = asyncio.Event()
            self.scheduler = asyncio.get_running_loop().create_task(self._schedule())

    async def generate(self, request: SpeechTokenRequest) -> AsyncIterator[list[int]]:
        """Yield the speech tokens of one text segment as they are sampled.

        Each item holds every token ready at that moment: a consumer that falls behind gets
        them in one message instead of paying a stream hop per token.
        """
        self._ensure_scheduler()
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self.worker, self.decoder.start, request)
        sequence_id, queue = next(self.ids), asyncio.Queue()
        self.sequences[sequence_id] = _Sequence(state, queue)
        self.wakeup.set()
        try:
            finished = False
            while not finished:
                ready = [await queue.get()]
                while not queue.empty():
                    ready.append(queue.get_nowait())
                if finished := ready[-1] is None:
                    ready.pop()
                if errors := [item for item in ready if isinstance(item, BaseException)]:
                    raise errors[0]
                if ready:
                    yield ready
        finally:
            # Also reached when the caller goes away: the scheduler stops stepping this sequence.
            self.sequences.pop(sequence_id, None)

    async def generate_all(self, request: SpeechTokenRequest) -> list[int]:
        """All speech tokens of one segment in one reply (for callers that do not stream)."""
        return [token async for ready in self.generate(request) for token in ready]

    def _step_all(self, sequences: list[tuple[int, _Sequence]]) -> list[tuple[int, int | None, BaseException | None]]:
        try:
            tokens = self.decoder.step_batch([sequence.state for _, sequence in sequences])
            return [(sequence_id, token, None) for (sequence_id, _), token in zip(sequences, tokens, strict=True)]
        except Exception:
            logger.exception("batched decoding step failed; retrying the sequences one by one")
        results = []
        for sequence_id, sequence in sequences:
            try:
                results.append((sequence_id, self.decoder.step(sequence.state), None))
            except Exception as exc:  # one broken sequence must not stop the others
                logger.exception("speech-token decoding failed")
                results.append((sequence_id, None, exc))
        return results

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.sequences:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch = list(self.sequences.items())
            self.load.set(len(batch))
            results = await loop.run_in_executor(self.worker, self._step_all, batch)
            emitted = 0
            for sequence_id, token, error in results:
                sequence = self.sequences.get(sequence_id)
                if sequence is None:
                    continue
                if error is not None:
                    sequence.queue.put_nowait(error)
                    self.sequences.pop(sequence_id, None)
                    continue
                if token is not None:
                    emitted += 1
                    sequence.queue.put_nowait(token)
                if sequence.state.finished:
                    sequence.queue.put_nowait(None)
                    self.sequences.pop(sequence_id, None)
            if emitted:
                self.tokens_generated += emitted
                metric("cosyvoice_llm_tokens_total").inc(emitted)
            if not self.sequences:
                self.load.set(0)

    def stats(self) -> dict[str, int]:
        """Tokens generated by this replica so far, and sequences being decoded now."""
        return {"tokens_generated": self.tokens_generated, "active_sequences": len(self.sequences)}

    def check_health(self) -> None:
        if self.scheduler is not None and self.scheduler.done() and not self.scheduler.cancelled():
            raise RuntimeError(f"LLM scheduler stopped: {self.scheduler.exception()!r}")
