"""`cosyvoice-serve bench-chunk-cost`: per-chunk cost of streamed flow decoding as an utterance grows.

Upstream's streaming schedule decodes `tokens[:end]` from the start at every chunk and keeps the
new frames, so each chunk costs more than the one before; this measures by how much, next to the
incremental decoder (`tts_model.flow_incremental`), which runs the flow estimator on the new frames
only and carries the earlier frames' attention keys/values in a cache.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from benchmarks.options import add_common_arguments, model_options, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, workload=False)
    parser.add_argument("--chunks", type=positive_int, default=12, metavar="N",
                        help="streamed chunks to time (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random speech tokens decoded")


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
    rows, times, cache = [], [], None
    while len(rows) < chunks and (plan := planner.next_chunk(len(tokens), llm_finished=False)):
        started = time.perf_counter()
        mel = flow_mel(model.flow, tokens[:plan.end], prompt, plan.token_offset, plan.streaming, plan.finalize)
        recompute_seconds = time.perf_counter() - started
        started = time.perf_counter()
        incremental, cache = flow_mel_incremental(model.flow, tokens[:plan.end], prompt, plan.token_offset, cache)
        times.append((recompute_seconds, time.perf_counter() - started))
        rows.append({"chunk": len(rows), "tokens": plan.end, "new_frames": int(mel.shape[1]),
                     "seconds": round(times[-1][0], 3), "incremental_seconds": round(times[-1][1], 3),
                     "max_abs_diff": float(np.abs(incremental - mel).max()),
                     "cache_mb": round(cache.nbytes / 2**20, 1)})
    covered_bytes = (cache.keys.numel() + cache.values.numel()) * cache.keys.element_size()
    # Ratios from the unrounded times: a tiny twin's first chunk may round to 0 s.
    return {"prompt_tokens": len(voice.speech_token), "dtype": dtype, "threads": threads, "chunks": rows,
            "last_over_first": round(times[-1][0] / times[0][0], 2),
            "incremental_last_over_first": round(times[-1][1] / times[0][1], 2),
            "cache_bytes_per_frame": covered_bytes // cache.frames}


def run(args: argparse.Namespace) -> int:
    """Print one line per chunk, then one JSON line."""
    model = model_options(args)
    report = chunk_costs(str(model.model_dir), model.dtype, model.inprocess_threads, args.chunks, args.seed)
    for row in report["chunks"]:
        print(f"chunk {row['chunk']:2d}: {row['tokens']:4d} tokens so far, {row['new_frames']} new mel frames, "
              f"recompute {row['seconds']:.3f} s, incremental {row['incremental_seconds']:.3f} s "
              f"(cache {row['cache_mb']} MB)")
    print(json.dumps(dict(report, model=str(model.model_dir))), flush=True)
    return 0
