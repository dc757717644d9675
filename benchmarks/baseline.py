"""The baseline, run in a child process of its own.

Upstream's `cosyvoice` modules driven the way upstream's FastAPI server drives them: one process,
one model copy, each concurrent request on its own thread, no batching. Each request normalises
and tokenises its text, then iterates upstream's `CosyVoice2Model.tts` (which starts its own LLM
thread, polls it every 0.1 s when streaming, and runs flow + HiFT in the request's thread) and
turns each yielded chunk into 16-bit PCM as the server's `generate_data` does. Its LLM samples as
current upstream does, from a random stream per request (`SeededSampling`), so it speaks the
service's tokens for the same seeds and both sides make the same audio. In zero-shot, each
request also decodes the uploaded prompt and, per text segment, extracts its features as
upstream's `frontend_zero_shot` does (prompt text tokens, mel, speech tokens, speaker embedding).
No HTTP is involved: the baseline is upstream's server minus its transport, which favours it.

A child process gives the baseline a clean process of its own, as a standalone upstream server
would have, so its start-up and memory are its own. It reports when its imports ended, when its
model was loaded and how long the warm-up took, and its PSS once ready and after the run. Run as
`python -m benchmarks.baseline PLAN.json RESULT.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.memory import UsageSampler, own_process, pss_snapshot
from benchmarks.workload import BenchRequest, LevelRun, RequestResult, Speaker, build_workload, warmup_request

logger = logging.getLogger(__name__)


@dataclass
class BaselinePlan:
    """What the child process runs (written as JSON by the parent)."""

    model_dir: str
    dtype: str
    #: sft: the voice spoken; zero-shot: None (the workload's fixed prompt is uploaded).
    voice_id: str | None
    #: (mode, concurrency, requests), in the order the service ran them.
    levels: list[tuple[str, int, int]] = field(default_factory=list)
    seed: int = 0
    workload: str = "sft"

    def speaker(self) -> Speaker:
        return Speaker.zero_shot() if self.workload == "zero-shot" else Speaker("sft", voice_id=self.voice_id)


class _FlowAtDtype:
    """The flow decoder as upstream code sees it, when it is not fp32.

    Upstream's `CosyVoice2Model` hands the flow fp32 prompts and embeddings and gives its mel to
    an fp32 HiFT; its own half-precision path relies on CUDA autocast, which does nothing on CPU.
    Casting the floating inputs in and the mel out is the least change that lets upstream run a
    bf16 model on CPU. An fp32 flow is handed to upstream unwrapped.
    """

    def __init__(self, flow: Any):
        self._flow = flow
        self._dtype = next(flow.parameters()).dtype

    def inference(self, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        cast = {key: value.to(self._dtype) if torch.is_tensor(value) and value.is_floating_point() else value
                for key, value in kwargs.items()}
        mel, cache = self._flow.inference(**cast)
        return mel.float(), cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._flow, name)


class SeededSampling:
    """How the baseline's LLM samples: current upstream's `sampling_ids` (end-of-speech masked while
    not allowed, and the special tokens after it masked, as the service and the fidelity reference
    do: `allowed_scores`), with each request drawing from a random stream of its own, seeded as
    the service seeds it.

    Upstream's server draws every request from torch's one global RNG, so under concurrency a
    request's tokens depend on the others'. A stream per request makes the baseline speak, at every
    concurrency, exactly the tokens the service speaks for the same seeds: both sides make the same
    audio and their times compare directly. Upstream's own sampling code draws from the global RNG;
    the request's state is swapped in for each draw, under a lock (a draw takes microseconds).
    """

    def __init__(self, llm: Any):
        self.llm = llm
        self.lock = threading.Lock()
        self.local = threading.local()
        #: RNG state per segment's text tensor (`id`), from its request until its LLM thread starts.
        self.pending: dict[int, torch.Tensor] = {}

    def seed(self, text: torch.Tensor, seed: int) -> None:
        self.pending[id(text)] = torch.Generator().manual_seed(seed).get_state()

    def begin(self, text: torch.Tensor) -> None:
        """In the segment's LLM thread, before its first draw."""
        self.local.state = self.pending.pop(id(text))

    def sampling_ids(self, weighted_scores: torch.Tensor, decoded_tokens: list[int], sampling: int,
                     ignore_eos: bool = True) -> int:
        from tts_model.llm_decode import allowed_scores

        scores = allowed_scores(weighted_scores, self.llm.speech_token_size, ignore_eos, speech_only=True)
        with self.lock:
            shared = torch.get_rng_state()
            torch.set_rng_state(self.local.state)
            try:
                return self.llm.sampling(scores, decoded_tokens, sampling)
            finally:
                self.local.state = torch.get_rng_state()
                torch.set_rng_state(shared)


class UpstreamServer:
    """What upstream's FastAPI server holds (one `CosyVoice2Model`) and does per request."""

    def __init__(self, model: Any, speaker: Speaker):
        from cosyvoice.cli.model import CosyVoice2Model

        from tts_model.frontend import TextFrontend, VoiceFeatureExtractor

        if speaker.workload == "sft" and speaker.voice_id not in model.spk2info:
            raise ValueError(f"the model has no speaker {speaker.voice_id!r}")
        flow = model.flow if model.dtype == torch.float32 else _FlowAtDtype(model.flow)
        self.upstream = CosyVoice2Model(None, flow, model.hift)
        # Upstream's __init__ sets `self.llm = llm`; the installed copy has that line commented out.
        self.upstream.llm = model.llm
        self.sampling = SeededSampling(model.llm)
        model.llm.sampling_ids = self.sampling.sampling_ids
        self.frontend = TextFrontend(model.tokenizer)
        self.voices = VoiceFeatureExtractor(model)
        self.speaker = speaker
        self.spk2info = model.spk2info
        self.sample_rate = model.sample_rate
        self._llm_errors: dict[int, BaseException] = {}
        self._guard_llm_job()

    def _guard_llm_job(self) -> None:
        """Give the LLM thread its request's random stream, and record its crash instead of letting
        it hang the request.

        Upstream's streaming loop polls until its LLM thread marks the sequence finished; a thread
        that raises never does, and the request would poll forever. Only that failure path changes.
        """
        original = self.upstream.llm_job

        def llm_job(text: torch.Tensor, *args: Any) -> None:
            try:
                self.sampling.begin(text)
                original(text, *args)
            except Exception as exc:
                self._llm_errors[id(text)] = exc
                self.upstream.llm_end_dict[args[-1]] = True

        self.upstream.llm_job = llm_job

    def voice_inputs(self) -> Callable[[], dict[str, Any]]:
        """The model inputs of the request's voice, per text segment: sft, a speaker's embedding;
        zero-shot, the uploaded prompt decoded once per request (the server's `load_wav`) and its
        features extracted per segment (upstream's `frontend_zero_shot`)."""
        from tts_core.audio import decode_audio
        from tts_model.frontend import voice_to_spk2info

        if self.speaker.workload == "sft":
            embedding = self.spk2info[self.speaker.voice_id]["embedding"]
            return lambda: {"flow_embedding": embedding, "llm_embedding": embedding}
        prompt = decode_audio(self.speaker.prompt_wav)
        speech_16k = self.voices.to_prompt_rate(prompt.samples, prompt.sample_rate)
        return lambda: voice_to_spk2info(self.voices.extract(speech_16k,
                                                             self.frontend.prompt_tokens(self.speaker.prompt_text)))

    def request(self, request: BenchRequest, stream: bool) -> RequestResult:
        from tts_model.chunk_schedule import segment_seed

        started = time.perf_counter()
        first: float | None = None
        samples = 0
        try:
            segment_inputs = self.voice_inputs()
            # Upstream's inference_sft / inference_zero_shot: normalise and split, then the front end
            # and tts per segment.
            for index, segment in enumerate(self.frontend.normalize(request.text)):
                text = torch.tensor([self.frontend.tokenize(segment)], dtype=torch.int32)
                inputs = segment_inputs()
                self.sampling.seed(text, segment_seed(request.seed, index))
                for output in self.upstream.tts(text=text, stream=stream, **inputs):
                    pcm = (output["tts_speech"].numpy() * (2**15)).astype(np.int16).tobytes()
                    if first is None and pcm:
                        first = time.perf_counter() - started
                    samples += len(pcm) // 2
                if (error := self._llm_errors.pop(id(text), None)) is not None:
                    raise error
        except Exception as exc:  # recorded per request: concurrent forwards on one model may fail
            return RequestResult(index=request.index, latency_s=time.perf_counter() - started,
                                 error=f"{type(exc).__name__}: {exc}")
        latency = time.perf_counter() - started
        return RequestResult(index=request.index, latency_s=latency, ttfa_s=first if stream else latency,
                             audio_s=samples / self.sample_rate)


def run_level(server: UpstreamServer, mode: str, concurrency: int, requests: list[BenchRequest]) -> LevelRun:
    """`concurrency` threads, each taking the next request as soon as its last one finished."""
    stream = mode == "stream"
    with UsageSampler(own_process) as usage:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="request") as pool:
            results = list(pool.map(lambda request: server.request(request, stream), requests))
        wall = time.perf_counter() - started
    return LevelRun(mode=mode, concurrency=concurrency, wall_s=wall, results=results,
                    peak_rss_bytes=usage.peak_bytes, cpu_s=usage.cpu_seconds)


def run(plan: BaselinePlan) -> dict[str, Any]:
    import cosyvoice.cli.model  # noqa: F401  (the rest of the imports a server does before loading)

    from tts_model.loader import load_model

    imported = time.time()
    model = load_model(plan.model_dir, dtype=plan.dtype, upstream_loading=True)
    loaded = time.time()
    server = UpstreamServer(model, plan.speaker())
    warmup_s = {}
    for mode in dict.fromkeys(mode for mode, _, _ in plan.levels):
        warm = server.request(warmup_request(), stream=mode == "stream")
        warmup_s[mode] = round(warm.latency_s, 3)
        logger.info("baseline warm-up (%s): %.1f s%s", mode, warm.latency_s, f", {warm.error}" if warm.error else "")
    ready = pss_snapshot(own_process())
    levels = []
    for mode, concurrency, count in plan.levels:
        level = run_level(server, mode, concurrency, build_workload(count, plan.seed))
        logger.info("baseline %s c=%d: %d requests in %.1f s", mode, concurrency, count, level.wall_s)
        levels.append(level)
    return {"levels": [level.to_dict() for level in levels], "torch_threads": torch.get_num_threads(),
            "memory": {"ready": ready, "after_run": pss_snapshot(own_process())},
            # Epoch seconds, for the parent to set against when it launched this process.
            "times": {"created": own_process()[0].create_time(), "imported": imported, "loaded": loaded},
            "warmup_s": warmup_s}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    plan_path, result_path = map(Path, argv)
    data = json.loads(plan_path.read_text())
    data["levels"] = [tuple(level) for level in data["levels"]]
    result = run(BaselinePlan(**data))
    result_path.write_text(json.dumps(result))
    # Upstream may leave an LLM thread of a failed request running; do not wait for it.
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
