"""Per-chunk cost of streamed flow decoding as an utterance grows.

Upstream's streaming schedule decodes `tokens[:end]` from the start at every chunk and keeps the
new frames, so each chunk costs more than the one before; this measures by how much, next to the
incremental decoder (`tts_model.flow_incremental`), which runs the flow estimator on the new frames
only and carries the earlier frames' attention keys/values in a cache.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def chunk_costs(model_dir: str, dtype: str, threads: int, chunks: int = 12, seed: int = 0) -> dict[str, Any]:
    import torch

    from tts_core.wire import FlowPrompt
    from tts_model.chunk_schedule import StreamPlanner
    from tts_model.flow_decode import flow_mel
    from tts_model.flow_incremental import flow_mel_incremental
    from tts_model.frontend import voice_from_spk2info
    from tts_model.loader import load_model

    torch.set_num_threads(threads)
    model = load_model(model_dir, parts=["flow", "frontend"], dtype=dtype)
    voice = voice_from_spk2info(next(iter(model.spk2info.values())))
    prompt = FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding)
    tokens = np.random.default_rng(seed).integers(0, 6561, 25 * (chunks + 4)).tolist()
    planner = StreamPlanner(len(voice.speech_token), stream=True)
    rows, cache = [], None
    while len(rows) < chunks and (plan := planner.next_chunk(len(tokens), llm_finished=False)):
        started = time.perf_counter()
        mel = flow_mel(model.flow, tokens[:plan.end], prompt, plan.token_offset, plan.streaming, plan.finalize)
        recompute_seconds = time.perf_counter() - started
        started = time.perf_counter()
        incremental, cache = flow_mel_incremental(model.flow, tokens[:plan.end], prompt, plan.token_offset, cache)
        rows.append({"chunk": len(rows), "tokens": plan.end, "new_frames": int(mel.shape[1]),
                     "seconds": round(recompute_seconds, 3),
                     "incremental_seconds": round(time.perf_counter() - started, 3),
                     "max_abs_diff": float(np.abs(incremental - mel).max()),
                     "cache_mb": round(cache.nbytes / 2**20, 1)})
    covered_bytes = (cache.keys.numel() + cache.values.numel()) * cache.keys.element_size()
    return {"prompt_tokens": len(voice.speech_token), "dtype": dtype, "threads": threads, "chunks": rows,
            "last_over_first": round(rows[-1]["seconds"] / rows[0]["seconds"], 2),
            "incremental_last_over_first": round(rows[-1]["incremental_seconds"] / rows[0]["incremental_seconds"], 2),
            "cache_bytes_per_frame": covered_bytes // cache.frames}
