"""The benchmark's fixed workload, and the figures computed from its requests.

Every side of the comparison (the service over HTTP, a server at --compare-url, the upstream-style
baseline in one process) runs exactly these requests with the same speaker, and is summarised by
the same functions, so their figures compare.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.flow_metrics import flow_figures

#: English sentences of varied length. Each stays under the front end's 80-token split limit, so
#: every request is one text segment and "first audio" means the same thing on both sides.
SENTENCES: tuple[str, ...] = (
    "Hello, and welcome.",
    "The quick brown fox jumps over the lazy dog.",
    "Please leave your message after the tone.",
    "It is twenty past four, and the train to the city is running ten minutes late.",
    "Good morning!",
    "Our meeting has been moved to Thursday afternoon, in the small conference room on the third floor.",
    "She sells sea shells by the sea shore.",
    "Thank you for calling; all of our agents are busy at the moment, so please stay on the line.",
    "Turn left at the next intersection.",
    "The library will be closed on Monday for the public holiday, and will reopen on Tuesday at nine.",
    "Can you hear me now?",
    "A gentle breeze drifted across the valley as the sun slowly set behind the distant hills.",
    "Your order has shipped.",
    "Remember to bring a warm jacket, because the forecast says it will be cold and windy tonight.",
    "The answer is 42, give or take 3.5 percent.",
    "In the end, the small team finished the project two weeks ahead of schedule and well under budget.",
)
#: Sent once per mode before any measured request: first calls pay one-off costs (the text
#: normaliser's grammar load, lazy allocations) that a running service has long paid.
WARMUP_TEXT = "This sentence warms the pipeline up."
WARMUP_SEED = 2**31 - 1

MODES = ("stream", "whole")
#: sft: a pretrained voice by id; zero-shot: a prompt recording and its transcript uploaded with
#: every request, so each one pays the prompt's feature extraction.
WORKLOADS = ("sft", "zero-shot")
PROMPT_SECONDS = 3.0
PROMPT_TEXT = "Hello, this is a sample of my voice."
#: Pitch and noise seed of the uploaded prompt: a voice none of the twin's pretrained ones has.
PROMPT_F0, PROMPT_SEED = 180.0, 1


@dataclass(frozen=True)
class BenchRequest:
    index: int
    text: str
    seed: int


@dataclass(frozen=True)
class Speaker:
    """Who speaks every request of a run: a registered voice (sft), or a prompt uploaded with
    each request (zero-shot)."""

    workload: str
    voice_id: str | None = None
    prompt_wav: bytes | None = None
    prompt_text: str | None = None

    @classmethod
    def zero_shot(cls) -> Speaker:
        """The fixed prompt: `PROMPT_SECONDS` of speech-like audio as a 16 kHz WAV, with its transcript."""
        from tts_core.synthetic_speech import speech_like_wav

        return cls("zero-shot", prompt_wav=speech_like_wav(PROMPT_SECONDS, f0=PROMPT_F0, seed=PROMPT_SEED),
                   prompt_text=PROMPT_TEXT)


def build_workload(count: int, seed: int = 0) -> list[BenchRequest]:
    """Request i speaks sentence i (cycling) with seed `seed + i`: the same at every level and side."""
    return [BenchRequest(index=i, text=SENTENCES[i % len(SENTENCES)], seed=seed + i) for i in range(count)]


def warmup_request() -> BenchRequest:
    return BenchRequest(index=-1, text=WARMUP_TEXT, seed=WARMUP_SEED)


@dataclass
class RequestResult:
    """One request as its client saw it. Times are seconds from sending the request."""

    index: int
    latency_s: float
    #: Time to the first audio sample (streaming); the full response time in whole mode.
    ttfa_s: float | None = None
    audio_s: float = 0.0
    error: str | None = None
    #: Seconds per stage from the response's `Server-Timing` (streamed: up to the first chunk;
    #: whole: the whole request), when the server sends one.
    stages: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LevelRun:
    """One side's run of one mode at one concurrency."""

    mode: str
    concurrency: int
    wall_s: float
    results: list[RequestResult] = field(default_factory=list)
    #: Peak of the summed RSS of the side's processes during the run (None: not measurable).
    peak_rss_bytes: int | None = None
    #: CPU seconds the side's processes spent during the run (None: not measurable).
    cpu_s: float | None = None
    #: The flow's streamed-chunk and eviction counters over the run (`benchmarks.flow_metrics`;
    #: None: not measured).
    flow_counts: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelRun:
        results = [RequestResult(**result) for result in data.get("results", [])]
        return cls(mode=data["mode"], concurrency=data["concurrency"], wall_s=data["wall_s"], results=results,
                   peak_rss_bytes=data.get("peak_rss_bytes"), cpu_s=data.get("cpu_s"),
                   flow_counts=data.get("flow_counts"))


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, interpolated linearly between order statistics (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def summarize(run: LevelRun) -> dict[str, Any]:
    """The reported figures of one run.

    throughput: seconds of audio produced per second of wall time over the whole run;
    rtf: median over requests of processing time / audio seconds (below 1 is faster than real time);
    cpu_per_audio_s: CPU seconds of the side's processes per second of audio; cores_busy: their CPU
    seconds per wall second.
    """
    ok = [result for result in run.results if result.ok]
    audio_s = sum(result.audio_s for result in ok)
    ttfa = [result.ttfa_s for result in ok if result.ttfa_s is not None]
    rtf = [result.latency_s / result.audio_s for result in ok if result.audio_s > 0]
    timed = [result.stages for result in ok if result.stages]
    stage_names = list(dict.fromkeys(stage for stages in timed for stage in stages))
    errors = [result.error for result in run.results if not result.ok]
    return {
        "requests": len(run.results),
        "errors": len(errors),
        "wall_s": round(run.wall_s, 3),
        "audio_s": round(audio_s, 3),
        "throughput": round(audio_s / run.wall_s, 4) if run.wall_s > 0 else None,
        "ttfa_p50_ms": _ms(percentile(ttfa, 50)),
        "ttfa_p95_ms": _ms(percentile(ttfa, 95)),
        "latency_p50_ms": _ms(percentile([result.latency_s for result in ok], 50)),
        "rtf": round(statistics.median(rtf), 4) if rtf else None,
        "peak_rss_mb": None if run.peak_rss_bytes is None else round(run.peak_rss_bytes / 2**20, 1),
        "cpu_s": None if run.cpu_s is None else round(run.cpu_s, 2),
        "cpu_per_audio_s": round(run.cpu_s / audio_s, 2) if run.cpu_s is not None and audio_s > 0 else None,
        "cores_busy": round(run.cpu_s / run.wall_s, 2) if run.cpu_s is not None and run.wall_s > 0 else None,
        "first_error": errors[0] if errors else None,
        "flow": None if run.flow_counts is None else flow_figures(run.flow_counts),
        # Where the time to first audio went (whole mode: the whole request's), per stage.
        "stages_p50_ms": {stage: _ms(percentile([stages.get(stage, 0.0) for stages in timed], 50))
                          for stage in stage_names} or None,
    }


def ratio(service: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """service / baseline for each compared figure (throughput: above 1 is better for the service;
    ttfa, rtf, memory and CPU per audio second: below 1 is)."""
    def divide(key: str) -> float | None:
        numerator, denominator = service.get(key), baseline.get(key)
        if numerator is None or not denominator:
            return None
        return round(numerator / denominator, 3)

    return {"throughput": divide("throughput"), "ttfa_p50": divide("ttfa_p50_ms"), "rtf": divide("rtf"),
            "peak_rss": divide("peak_rss_mb"), "cpu_per_audio_s": divide("cpu_per_audio_s")}
