"""Flow-matching decoder deployment: speech tokens -> mel, one chunk or one utterance per call."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import psutil
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from deployments.metrics import StageLoad, metric
from deployments.model_stage import ModelThread, core_budget, load_stage
from tts_core.settings import Settings
from tts_core.wire import FlowPrompt
from tts_model.flow_decode import FlowRequest, flow_mel_batch
from tts_model.flow_incremental import FlowStreamCache, flow_mel_incremental, prompt_state

logger = logging.getLogger("ray.serve")

#: Keys of voices' shared decoder state in a replica's `StreamCacheStore` (streams' keys are hex).
PROMPT_KEY_PREFIX = "prompt:"


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


class StreamCacheStore:
    """Streams' decoder state kept by one replica, within a byte budget (least recently used
    streams are dropped first). Losing an entry costs time, never correctness: the stream's next
    chunk is then decoded from the start and its state rebuilt."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.entries: OrderedDict[str, _Sized] = OrderedDict()
        self.nbytes = 0

    def get(self, key: str) -> _Sized | None:
        """The entry under `key`, kept and made the newest; for entries many streams read."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def take(self, key: str) -> _Sized | None:
        """Remove and return the stream's entry, if this replica still has it."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
        return entry

    def put(self, key: str, entry: _Sized) -> list[str]:
        """Keep `entry` for the stream, dropping older streams to make room. Returns the streams
        whose state was dropped: `key` itself when `entry` alone is over the budget."""
        self.take(key)
        if entry.nbytes > self.capacity_bytes:
            return [key]
        dropped_keys = []
        while self.nbytes + entry.nbytes > self.capacity_bytes:
            dropped_key, dropped = self.entries.popitem(last=False)
            self.nbytes -= dropped.nbytes
            dropped_keys.append(dropped_key)
        self.entries[key] = entry
        self.nbytes += entry.nbytes
        return dropped_keys


#: Every call of one stream goes to the same replica, the one holding its decoder state: callers name
#: the stream as the call's session id and the replicas sit on a consistent-hash ring. No fallback
#: to another replica under load (there the chunk would cost a full decode); only when its replica
#: is gone does a stream move, to the ring's next one.
STREAM_AFFINITY = RequestRouterConfig(request_router_class=ConsistentHashRouter,
                                      request_router_kwargs={"num_fallback_replicas": 0})


def stream_cache_bytes(setting_mb: float | None) -> int:
    """The streams' state budget: the setting, else a quarter of the node's memory. A real-size
    fp32 stream of a 3 s prompt and 2 s of speech holds 656 MiB, plus 438 MiB once per voice (README:
    "What a stream's state costs"): a quarter of 24 GiB holds eight."""
    if setting_mb is not None:
        return int(setting_mb * 2**20)
    budget = psutil.virtual_memory().total // 4
    logger.info("flow stream state budget: %.0f MiB (a quarter of the node's memory)", budget / 2**20)
    return budget


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  request_router_config=STREAM_AFFINITY)
class FlowDecoder:
    """Stateless for correctness: the stream's token offset arrives with each call.

    Streamed chunks are decoded incrementally from the stream's decoder state, which the replica
    keeps between chunks (`tts_model.flow_incremental`), so each costs the same however long the
    utterance; a replica without it (the stream's replica died, or dropped the state for room)
    decodes from the start, as upstream does. A stream's final chunk is decoded in full with full
    attention, as upstream does, unless `flow_stream_final_chunk` is `incremental`: then it is
    decoded like the others, chunk-causally from the kept state. A stream's state starts from its
    voice's (`prompt_state`), kept once per voice among the streams' and shared by them, so a
    stream neither decodes nor holds the prompt's first frames. Such chunks are decoded one by
    one, streams' first chunks ahead of the others waiting. Whole utterances and full final
    chunks are batched: calls that arrive while a batch runs form the next one, so a busy replica
    runs one estimator pass for many requests and an idle one waits for nobody. Each Euler step of
    a pass resizes its threads to the cores the other stages leave free at that moment.
    """

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["flow"])
        self.worker = ModelThread(core_budget(settings))
        self.stream_caches = StreamCacheStore(stream_cache_bytes(settings.flow_stream_cache_mb))
        self.incremental_final = settings.flow_stream_final_chunk == "incremental"
        self.load = StageLoad("flow")
        # Streamed chunks by how they were decoded (see `_decode_streamed`), and their decoding seconds.
        self.streamed: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.decode_batch.set_max_batch_size(settings.flow_max_batch_size)
        self.decode_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def decode(self, tokens: list[int], prompt: FlowPrompt, token_offset: int, streaming: bool,
                     finalize: bool, stream_key: str | None = None) -> np.ndarray:
        """Mel [80, T] of `tokens[token_offset:]` (the earlier tokens give context).

        `stream_key` names the stream a streamed chunk belongs to, so its decoder state can be reused.
        """
        request = FlowRequest(tokens, prompt, token_offset, streaming, finalize)
        with self.load:
            if stream_key is not None and self._incremental(request):
                # Shares no work with other calls: alone, it is back as soon as it is decoded, not
                # when a batch of other streams' chunks is. A stream's first chunk goes first.
                return await self.worker.run(self._decode_streamed, replace(request, streaming=True), stream_key,
                                             urgent=token_offset == 0)
            return await self.decode_batch(request, stream_key)

    def _incremental(self, request: FlowRequest) -> bool:
        """Whether a stream's chunk is decoded from its kept state (the final one only if so configured)."""
        return bool(self.stream_caches.capacity_bytes) and (
            request.streaming or (request.finalize and self.incremental_final))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def decode_batch(self, requests: list[FlowRequest], stream_keys: list[str | None]) -> list[np.ndarray]:
        return await self.worker.run(self._decode, requests, stream_keys)

    def _decode(self, requests: list[FlowRequest], stream_keys: list[str | None]) -> list[np.ndarray]:
        """Whole utterances and streams' chunks decoded in full from the stream's start."""
        for key in stream_keys:
            if key is not None:  # the stream's state is of no more use
                self.stream_caches.take(key)
        started = time.perf_counter()
        mels = flow_mel_batch(self.model.flow, requests, self.model.token_mel_ratio, before_step=self.worker.rebalance)
        seconds = (time.perf_counter() - started) / len(requests)
        for request, key in zip(requests, stream_keys, strict=True):
            if key is not None:
                self._count("final" if request.finalize and not request.streaming
                            else "from_start" if request.token_offset else "first",
                            seconds)
        return mels

    def _decode_streamed(self, request: FlowRequest, key: str) -> np.ndarray:
        """One chunk decoded from the stream's kept state; counted as `first` (a stream's first chunk),
        `cached` (continued from the state this replica kept) or `from_start` (a later chunk without
        that state: a full decode)."""
        started = time.perf_counter()
        cache: FlowStreamCache | None = self.stream_caches.take(key)  # type: ignore[assignment]
        kind = "cached" if cache is not None else "from_start" if request.token_offset else "first"
        decode = partial(flow_mel_incremental, self.model.flow, request.tokens, request.prompt, request.token_offset,
                         token_mel_ratio=self.model.token_mel_ratio, finalize=request.finalize,
                         before_step=self.worker.rebalance)
        try:
            mel, cache = decode(cache, prefix=self._prompt_state(request.prompt) if cache is None else None)
        except ValueError:  # state from a later point of the stream (a retried chunk): start over
            kind = "from_start"
            mel, cache = decode(None, prefix=self._prompt_state(request.prompt))
        if not request.finalize:  # the stream's last chunk needs no state after it
            for dropped in self.stream_caches.put(key, cache):
                if not dropped.startswith(PROMPT_KEY_PREFIX):  # a voice's state is rebuilt, no stream falls back
                    metric("cosyvoice_flow_stream_evictions_total").inc(
                        tags={"reason": "too_large" if dropped == key else "room"})
        self._count(kind, time.perf_counter() - started)
        return mel

    def _prompt_state(self, prompt: FlowPrompt) -> FlowStreamCache | None:
        """The voice's shared state (`prompt_state`), kept among the streams' (within their budget)
        under a digest of the prompt, so each voice's is computed once while it is in use. One dropped
        for room stays alive, uncounted, in the streams started from it until they end."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (prompt.speech_token, prompt.speech_feat, prompt.embedding):
            digest.update(np.ascontiguousarray(array).tobytes())
        key = PROMPT_KEY_PREFIX + digest.hexdigest()
        state = self.stream_caches.get(key)
        if state is None:
            state = prompt_state(self.model.flow, prompt, self.model.token_mel_ratio, self.worker.rebalance)
            if state is not None:
                self.stream_caches.put(key, state)
        return state  # type: ignore[return-value]

    def _count(self, kind: str, seconds: float) -> None:
        self.streamed[kind][0] += 1
        self.streamed[kind][1] += seconds
        metric("cosyvoice_flow_streamed_chunks_total").inc(tags={"decode": kind})

    def stream_stats(self) -> dict[str, Any]:
        """This replica's streamed chunks by how they were decoded: count and decoding seconds of each kind."""
        # A copy first: the model thread adds a kind when it first decodes one (one C call, so atomic).
        streamed = list(self.streamed.items())
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "chunks": {kind: count for kind, (count, _) in streamed},
                "seconds": {kind: round(seconds, 4) for kind, (_, seconds) in streamed}}

    def check_health(self) -> None:
        if self.model.flow is None:
            raise RuntimeError("flow decoder not loaded")
