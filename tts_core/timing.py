"""Where a request's time went, stage by stage, reported in the `Server-Timing` response header.

The ingress times what it does before synthesis starts (the text front end, the voice's
features); the pipeline times how long it waited on each stage for every chunk (the LLM's first
token, the rest of the tokens, the flow decoder, the vocoder) and sends those times with the
chunk. A streamed response's headers leave once its first chunk exists, so its header says where
the time to first audio went; a whole response's header sums every chunk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

#: The stages, in the order a request meets them, with what each covers.
STAGES: dict[str, str] = {
    "text": "text normalised and tokenised by the front end",
    "prompt": "voice features: an uploaded prompt's extraction, or a voice's lookup",
    "llm_first": "first speech token: LLM queue and prefill",
    "llm": "further speech tokens (streamed: those the first chunk waits for)",
    "flow": "flow-matching decoder",
    "vocoder": "HiFT vocoder",
}


class StageTimes:
    """Seconds per stage, summed over every time a stage was measured."""

    def __init__(self, seconds: Mapping[str, float] | None = None):
        self.seconds: dict[str, float] = dict(seconds or {})

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def merge(self, seconds: Mapping[str, float]) -> None:
        for stage, value in seconds.items():
            self.add(stage, value)

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Time the block (a synchronous `with` around an `await` times the wait)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def take(self) -> dict[str, float]:
        """The times so far, which then start again from nothing."""
        taken, self.seconds = self.seconds, {}
        return taken

    def header(self, total_s: float | None = None) -> str:
        """The `Server-Timing` value: stages in their order, in milliseconds, then the total."""
        entries = [(stage, self.seconds[stage]) for stage in STAGES if stage in self.seconds]
        entries += [(stage, value) for stage, value in self.seconds.items() if stage not in STAGES]
        if total_s is not None:
            entries.append(("total", total_s))
        return ", ".join(f"{stage};dur={value * 1000:.1f}" for stage, value in entries)


def parse_server_timing(value: str) -> dict[str, float]:
    """Seconds per stage from a `Server-Timing` value (entries without a duration are skipped)."""
    stages: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip() == "dur":
                with contextlib.suppress(ValueError):
                    stages[name] = float(number.strip().strip('"')) / 1000
    return stages
