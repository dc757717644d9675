"""Asynchronous synthesis tasks as domain values: their states, their record, and the errors the
task manager raises (the API turns them into responses)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tts_core.modes import SynthesisMode


class TaskState(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (TaskState.PENDING, TaskState.PROCESSING)


@dataclass
class RenderedAudio:
    """A synthesized file in the output store."""

    file_name: str
    #: Seconds of audio.
    duration: float
    format: str
    sample_rate: int
    #: Wall seconds from the first chunk requested to the file stored.
    synthesis_time: float


@dataclass
class TaskRecord:
    task_id: str
    mode: SynthesisMode
    status: TaskState
    #: 0.0-1.0, never decreasing; 1.0 exactly when completed.
    progress: float
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    #: Epoch seconds of reaching a final state (for retention).
    finished_epoch: float | None = None
    error: str | None = None
    result: RenderedAudio | None = None


class TaskNotFoundError(KeyError):
    def __init__(self, task_id: str):
        super().__init__(task_id)
        self.task_id = task_id


class TaskStateError(ValueError):
    """The task is not in a state that allows the operation (e.g. cancelling a finished task)."""

    def __init__(self, task_id: str, status: str):
        super().__init__(f"task {task_id} is {status}")
        self.task_id, self.status = task_id, status

    def __reduce__(self) -> tuple:  # Ray re-raises actor errors in the caller by pickling them
        return type(self), (self.task_id, self.status)


class QueueFullError(RuntimeError):
    def __init__(self, pending: int, retry_after_s: int):
        super().__init__(f"{pending} tasks are already waiting")
        self.pending, self.retry_after_s = pending, retry_after_s

    def __reduce__(self) -> tuple:
        return type(self), (self.pending, self.retry_after_s)


def chunk_progress(segment: int, segments: int, tokens: int, text_tokens: int, segment_done: bool) -> float:
    """Fraction of a job done after a chunk: whole segments, plus the current one's decoded tokens
    against a typical 8 speech tokens per text token (capped: 1.0 is for completion only)."""
    within = 1.0 if segment_done else min(0.9, tokens / max(1, 8 * text_tokens))
    return min(0.99, (segment + within) / max(1, segments))
