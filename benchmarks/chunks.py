"""`cosyvoice-serve bench-chunk-cost`: per-chunk cost of streamed flow decoding as an utterance grows.

Upstream's streaming schedule decodes `tokens[:end]` from the start at every chunk and keeps the
new frames, so each chunk costs more than the one before; this measures by how much, next to the
incremental decoder (`tts_model.flow_incremental`), which runs the flow estimator on the new frames
only and carries the earlier frames' attention keys/values in a cache; and next to that decoder
started from the voice's shared prompt state (`prompt_state`), which a stream then does not hold.

Then the stream's last chunk, both ways: with full attention over the whole utterance (upstream's,
the default) and incrementally like the others (`flow_stream_final_chunk: incremental`), and how
far apart the stream's audio comes out.
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


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def chunk_costs(model_dir: str, dtype: str, threads: int, chunks: int = 12, seed: int = 0) -> dict[str, Any]:
    import torch

    from tts_core.wire import FlowPrompt
    from tts_model.chunk_schedule import StreamPlanner, chunk_seed
    from tts_model.flow_decode import flow_mel
    from tts_model.flow_incremental import flow_mel_incremental, prompt_state
    from tts_model.frontend import voice_from_spk2info
    from tts_model.loader import load_model
    from tts_model.vocode import vocode

    torch.set_num_threads(threads)
    model = load_model(model_dir, parts=["flow", "frontend", "hift"], dtype=dtype)
    voice = voice_from_spk2info(next(iter(model.spk2info.values())))
    prompt = FlowPrompt(voice.speech_token, voice.speech_feat, voice.embedding)
    # Enough tokens for `chunks` streamed chunks and a last one of about a hop and a half.
    tokens = np.random.default_rng(seed).integers(0, 6561, 25 * (chunks + 2) + 11).tolist()
    planner = StreamPlanner(len(voice.speech_token), stream=True)
    shared, prompt_state_s = timed(prompt_state, model.flow, prompt)
    rows, times, mels, cache, shared_cache = [], [], [], None, None
    while len(rows) < chunks and (plan := planner.next_chunk(len(tokens), llm_finished=False)):
        mel, recompute_s = timed(flow_mel, model.flow, tokens[:plan.end], prompt, plan.token_offset, plan.streaming,
                                 plan.finalize)
        (incremental, cache), incremental_s = timed(flow_mel_incremental, model.flow, tokens[:plan.end], prompt,
                                                    plan.token_offset, cache)
        (from_shared, shared_cache), shared_s = timed(flow_mel_incremental, model.flow, tokens[:plan.end], prompt,
                                                      plan.token_offset, shared_cache, prefix=shared)
        times.append((recompute_s, incremental_s))
        mels.append(incremental)
        rows.append({"chunk": len(rows), "tokens": plan.end, "new_frames": int(mel.shape[1]),
                     "seconds": round(recompute_s, 3), "incremental_seconds": round(incremental_s, 3),
                     "shared_prompt_seconds": round(shared_s, 3),
                     "max_abs_diff": float(np.abs(incremental - mel).max()),
                     "shared_prompt_max_abs_diff": float(np.abs(from_shared - mel).max()),
                     "cache_mb": round(cache.nbytes / 2**20, 1),
                     "shared_prompt_cache_mb": round(shared_cache.nbytes / 2**20, 1)})
    # Before the last chunk, which moves the cache on.
    bytes_per_frame = (cache.keys.numel() + cache.values.numel()) * cache.keys.element_size() // cache.frames
    tokens = tokens[:planner.token_offset + 36]
    full_final, full_final_s = timed(flow_mel, model.flow, tokens, prompt, planner.token_offset, streaming=False,
                                     finalize=True)
    (incremental_final, _), incremental_final_s = timed(flow_mel_incremental, model.flow, tokens, prompt,
                                                        planner.token_offset, cache, finalize=True)

    def audio(final: np.ndarray) -> np.ndarray:
        pcm, vocoder_cache = [], None
        for index, mel in enumerate([*mels, final]):
            samples, vocoder_cache = vocode(model.hift, mel, vocoder_cache, finalize=index == len(mels),
                                            seed=chunk_seed(seed, 0, index))
            pcm.append(samples)
        return np.concatenate(pcm)

    default, incremental_audio = audio(full_final), audio(incremental_final)
    error = incremental_audio - default
    # Ratios from the unrounded times: a tiny twin's first chunk may round to 0 s.
    return {"prompt_tokens": len(voice.speech_token), "dtype": dtype, "threads": threads, "chunks": rows,
            "last_over_first": round(times[-1][0] / times[0][0], 2),
            "incremental_last_over_first": round(times[-1][1] / times[0][1], 2),
            "cache_bytes_per_frame": bytes_per_frame,
            "shared_prompt": {"frames": shared.frames if shared else 0,
                              "mb": round(shared.nbytes / 2**20, 2) if shared else 0.0,
                              "seconds": round(prompt_state_s, 3)},
            "final_chunk": {"new_frames": int(full_final.shape[1]), "full_seconds": round(full_final_s, 3),
                            "incremental_seconds": round(incremental_final_s, 3),
                            "audio_samples": [len(default), len(incremental_audio)],
                            "audio_max_abs_diff": round(float(np.abs(error).max()), 5),
                            "audio_snr_db": round(10 * float(np.log10(np.sum(default**2) / np.sum(error**2))), 1)
                            if error.any() else None}}


def run(args: argparse.Namespace) -> int:
    """Print one line per chunk, then one JSON line."""
    model = model_options(args)
    report = chunk_costs(str(model.model_dir), model.dtype, model.inprocess_threads, args.chunks, args.seed)
    for row in report["chunks"]:
        print(f"chunk {row['chunk']:2d}: {row['tokens']:4d} tokens so far, {row['new_frames']} new mel frames, "
              f"recompute {row['seconds']:.3f} s, incremental {row['incremental_seconds']:.3f} s "
              f"(cache {row['cache_mb']} MB), from the shared prompt state {row['shared_prompt_seconds']:.3f} s "
              f"(cache {row['shared_prompt_cache_mb']} MB)")
    shared, final = report["shared_prompt"], report["final_chunk"]
    print(f"shared prompt state: {shared['frames']} frames, {shared['mb']} MB, {shared['seconds']:.3f} s once per "
          f"voice; final chunk: full attention {final['full_seconds']:.3f} s, incremental "
          f"{final['incremental_seconds']:.3f} s; audio difference max abs {final['audio_max_abs_diff']}, "
          f"SNR {final['audio_snr_db']} dB")
    print(json.dumps(dict(report, model=str(model.model_dir))), flush=True)
    return 0
