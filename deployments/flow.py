"""Flow-matching decoder deployment: speech tokens -> mel, one chunk or one utterance per call."""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from typing import Any, Protocol

import numpy as np
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from deployments.metrics import StageLoad, metric
from deployments.model_stage import ModelThread, core_budget, load_stage
from tts_core.settings import Settings
from tts_core.wire import FlowPrompt
from tts_model.flow_decode import FlowRequest, flow_mel_batch
from tts_model.flow_incremental import FlowStreamCache, flow_mel_incremental


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

    def take(self, key: str) -> _Sized | None:
        """Remove and return the stream's entry, if this replica still has it."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
        return entry

    def put(self, key: str, entry: _Sized) -> bool:
        """Keep `entry` for the stream, dropping older streams to make room; False if it cannot fit."""
        self.take(key)
        if entry.nbytes > self.capacity_bytes:
            return False
        while self.nbytes + entry.nbytes > self.capacity_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.nbytes -= dropped.nbytes
        self.entries[key] = entry
        self.nbytes += entry.nbytes
        return True


#: Every call of one stream goes to the same replica, the one holding its decoder state: callers name
#: the stream as the call's session id and the replicas sit on a consistent-hash ring. No fallback
#: to another replica under load (there the chunk would cost a full decode); only when its replica
#: is gone does a stream move, to the ring's next one.
STREAM_AFFINITY = RequestRouterConfig(request_router_class=ConsistentHashRouter,
                                      request_router_kwargs={"num_fallback_replicas": 0})


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16,
                  request_router_config=STREAM_AFFINITY)
class FlowDecoder:
    """Stateless for correctness: the stream's token offset arrives with each call.

    Streamed chunks are decoded incrementally from the stream's decoder state, which the replica
    keeps between chunks (`tts_model.flow_incremental`), so each costs the same however long the
    utterance; a replica without it (the stream's replica died, or dropped the state for room)
    decodes from the start, as upstream does. Whole utterances and final chunks are batched: calls
    that arrive while a batch runs form the next one, so a busy replica runs one estimator pass for
    many requests and an idle one waits for nobody.
    """

    def __init__(self, settings: Settings):
        self.model, _ = load_stage(settings, ["flow"])
        self.worker = ModelThread(core_budget(settings))
        self.stream_caches = StreamCacheStore(int(settings.flow_stream_cache_mb * 2**20))
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
        with self.load:
            return await self.decode_batch(FlowRequest(tokens, prompt, token_offset, streaming, finalize), stream_key)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def decode_batch(self, requests: list[FlowRequest], stream_keys: list[str | None]) -> list[np.ndarray]:
        return await self.worker.run(self._decode, requests, stream_keys)

    def _decode(self, requests: list[FlowRequest], stream_keys: list[str | None]) -> list[np.ndarray]:
        mels: list[np.ndarray | None] = [None] * len(requests)
        batched = []
        for index, (request, key) in enumerate(zip(requests, stream_keys, strict=True)):
            if key is not None and request.streaming and not request.finalize and self.stream_caches.capacity_bytes:
                mels[index] = self._decode_streamed(request, key)
                continue
            if key is not None:  # the final chunk decodes everything with full attention: state not needed
                self.stream_caches.take(key)
            batched.append(index)
        decoded = flow_mel_batch(self.model.flow, [requests[index] for index in batched], self.model.token_mel_ratio)
        for index, mel in zip(batched, decoded, strict=True):
            mels[index] = mel
        return mels  # type: ignore[return-value]

    def _decode_streamed(self, request: FlowRequest, key: str) -> np.ndarray:
        """One streamed chunk; counted as `first` (a stream's first chunk), `cached` (continued from the
        state this replica kept) or `from_start` (a later chunk without that state: a full decode)."""
        started = time.perf_counter()
        cache: FlowStreamCache | None = self.stream_caches.take(key)  # type: ignore[assignment]
        kind = "cached" if cache is not None else "from_start" if request.token_offset else "first"
        try:
            mel, cache = flow_mel_incremental(self.model.flow, request.tokens, request.prompt, request.token_offset,
                                              cache, self.model.token_mel_ratio)
        except ValueError:  # state from a later point of the stream (a retried chunk): start over
            kind = "from_start"
            mel, cache = flow_mel_incremental(self.model.flow, request.tokens, request.prompt, request.token_offset,
                                              None, self.model.token_mel_ratio)
        self.stream_caches.put(key, cache)
        self.streamed[kind][0] += 1
        self.streamed[kind][1] += time.perf_counter() - started
        metric("cosyvoice_flow_streamed_chunks_total").inc(tags={"decode": kind})
        return mel

    def stream_stats(self) -> dict[str, Any]:
        """This replica's streamed chunks by how they were decoded: count and decoding seconds of each kind."""
        return {"replica": serve.get_replica_context().replica_id.unique_id,
                "chunks": {kind: count for kind, (count, _) in self.streamed.items()},
                "seconds": {kind: round(seconds, 4) for kind, (_, seconds) in self.streamed.items()}}

    def check_health(self) -> None:
        if self.model.flow is None:
            raise RuntimeError("flow decoder not loaded")
