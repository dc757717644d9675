"""Recording the service's metrics (defined in `tts_core.metrics`) through Ray.

Serve replicas record through `ray.serve.metrics` (which adds deployment, replica and
application tags); the two plain actors (voice store, task manager) through `ray.util.metrics`.
Objects are created lazily, in the process that records.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from tts_core.metrics import METRICS


@cache
def metric(name: str) -> Any:
    """The metric object for `name`, created once per process."""
    spec = METRICS[name]
    if spec.actor:
        from ray.util import metrics as backend
    else:
        from ray.serve import metrics as backend
    if spec.kind == "counter":
        return backend.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind == "gauge":
        return backend.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return backend.Histogram(spec.name, description=spec.description, boundaries=list(spec.boundaries),
                             tag_keys=spec.tag_keys)


class StageLoad:
    """Counts the requests inside one stage's replica and publishes it as its queue depth."""

    def __init__(self, stage: str):
        self.stage, self.depth = stage, 0
        self.lock = threading.Lock()

    def __enter__(self) -> StageLoad:
        self.add(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.add(-1)

    def add(self, delta: int) -> None:
        with self.lock:
            self.set(self.depth + delta)

    def set(self, depth: int) -> None:
        self.depth = depth
        metric("cosyvoice_stage_queue_depth").set(depth, tags={"stage": self.stage})
