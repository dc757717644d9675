"""Asynchronous synthesis tasks: one named, detached Ray actor owns them all.

The manager runs each task itself: it consumes the pipeline's chunk stream (the stream's
ObjectRefs are owned here, not by the ingress replica that accepted the task, so a task survives
that replica), records progress, and stores the audio file. Records are persisted (one Parquet
file per task, replaced atomically) whenever their state changes; after a restart of this actor,
finished tasks are served from those files and tasks that were in flight are reported failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from typing import Any

from deployments.actors import existing_actor, named_detached_actor
from deployments.failures import root_cause
from deployments.metrics import metric
from tts_core.limits import now_iso
from tts_core.modes import SynthesisMode
from tts_core.rendering import render_to_store
from tts_core.settings import Settings
from tts_core.storage import task_codec
from tts_core.storage.blobs import BlobStore
from tts_core.tasks import (
    QueueFullError,
    TaskNotFoundError,
    TaskRecord,
    TaskState,
    TaskStateError,
    chunk_progress,
)
from tts_core.wire import SynthesisChunk, SynthesisJob

logger = logging.getLogger(__name__)

ROLE = "task-manager"
#: Progress reports are persisted at most this often (state changes always are).
PROGRESS_PERSIST_INTERVAL_S = 1.0
INTERRUPTED = "interrupted: the task manager restarted while the task was {state}"


@dataclasses.dataclass
class _Pending:
    job: SynthesisJob
    fmt: str
    sample_rate: int


class TaskManager:
    """The actor: submit, track, cancel, list and expire tasks (see the module docstring)."""

    def __init__(self, store_uri: str, outputs_uri: str, app_name: str, max_queued: int, max_running: int,
                 retention_s: float):
        self.store, self.outputs = BlobStore(store_uri), BlobStore(outputs_uri)
        self.app_name, self.retention_s = app_name, retention_s
        self.max_queued, self.max_running = max_queued, max_running
        self.tasks: dict[str, TaskRecord] = {}
        self.pending: dict[str, _Pending] = {}
        self.queue: deque[str] = deque()
        self.running: dict[str, Any] = {}  # task id -> the pipeline's chunk stream
        self.persisted_at: dict[str, float] = {}
        # Writes run off the event loop, one at a time and in order, so a slow store never
        # stalls the actor and an older snapshot of a record never lands after a newer one.
        self.write_lock: asyncio.Lock | None = None
        self.wakeup: asyncio.Event | None = None
        self.loops: list[asyncio.Task] = []
        self._restore()

    # -- persistence -------------------------------------------------------------------------------

    def _restore(self) -> None:
        for name in self.store.list(task_codec.FILE_SUFFIX):
            try:
                record = task_codec.decode(self.store.get(name))
            except Exception:
                logger.exception("task record %s is unreadable; skipped", name)
                continue
            if record.status.active:
                self._finish(record, TaskState.FAILED, INTERRUPTED.format(state=record.status))
                self.store.put(record.task_id + task_codec.FILE_SUFFIX, task_codec.encode(record))
            self.tasks[record.task_id] = record
        self._publish_counts()
        logger.info("task manager restored %d tasks", len(self.tasks))

    async def _persist(self, record: TaskRecord) -> None:
        """Save a task's record; called on every state change, which is also when the gauge moves."""
        self._publish_counts()
        data = task_codec.encode(record)
        self.persisted_at[record.task_id] = time.monotonic()
        self.write_lock = self.write_lock or asyncio.Lock()
        async with self.write_lock:
            await asyncio.to_thread(self.store.put, record.task_id + task_codec.FILE_SUFFIX, data)

    def _publish_counts(self) -> None:
        for state, count in self.counts().items():
            metric("cosyvoice_async_tasks").set(count, tags={"state": state})

    @staticmethod
    def _finish(record: TaskRecord, status: TaskState, error: str | None = None) -> None:
        record.status, record.completed_at, record.finished_epoch = status, now_iso(), time.time()
        if error is not None:
            record.error = error

    # -- scheduling --------------------------------------------------------------------------------

    def _ensure_loops(self) -> None:
        if not self.loops or any(loop.done() for loop in self.loops):
            self.wakeup = self.wakeup or asyncio.Event()
            self.loops = [asyncio.get_running_loop().create_task(self._run_queue()),
                          asyncio.get_running_loop().create_task(self._expire_forever())]

    async def _run_queue(self) -> None:
        while True:
            while self.queue and len(self.running) < self.max_running:
                task_id = self.queue.popleft()
                if task_id in self.pending:
                    asyncio.get_running_loop().create_task(self._run(task_id, self.pending.pop(task_id)))
            self.wakeup.clear()
            await self.wakeup.wait()

    async def _run(self, task_id: str, pending: _Pending) -> None:
        from ray import serve

        record = self.tasks[task_id]
        record.status, record.started_at = TaskState.PROCESSING, now_iso()
        await self._persist(record)
        pipeline = serve.get_deployment_handle("SynthesisPipeline", app_name=self.app_name)
        # Decoded in streaming chunks so progress rises during each segment.
        chunks = pipeline.options(stream=True).synthesize.remote(dataclasses.replace(pending.job, stream=True))
        self.running[task_id] = chunks
        try:
            record.result = await render_to_store(chunks, pending.fmt, self.outputs, pending.sample_rate,
                                                  on_chunk=lambda chunk: self._progress(record, chunk))
            record.progress = 1.0
            self._finish(record, TaskState.COMPLETED)
        except asyncio.CancelledError:
            self._finish(record, TaskState.CANCELLED, record.error or "cancelled")
        except Exception as exc:
            if record.status is not TaskState.CANCELLED:  # a cancelled stream ends in an error too
                logger.warning("task %s failed: %r", task_id, exc)
                self._finish(record, TaskState.FAILED, f"synthesis failed: {_reason(exc)}")
        finally:
            self.running.pop(task_id, None)
            if record.status is TaskState.PROCESSING:  # defensive: never leave a finished run processing
                self._finish(record, TaskState.FAILED, "synthesis ended without a result")
            await self._persist(record)
            self.wakeup.set()

    def _progress(self, record: TaskRecord, chunk: SynthesisChunk) -> None:
        """Progress never decreases; it is persisted at most every PROGRESS_PERSIST_INTERVAL_S."""
        if record.status is not TaskState.PROCESSING:
            return
        progress = chunk_progress(chunk.segment, chunk.segments, chunk.tokens, chunk.text_tokens, chunk.segment_done)
        record.progress = max(record.progress, progress)
        if time.monotonic() - self.persisted_at.get(record.task_id, 0.0) >= PROGRESS_PERSIST_INTERVAL_S:
            asyncio.get_running_loop().create_task(self._persist(record))

    async def _expire_forever(self, period_s: float = 60.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.expire()
            except Exception:
                logger.exception("task retention sweep failed")

    async def expire(self) -> list[str]:
        """Forget finished tasks (and delete their audio) older than the retention period."""
        cutoff = time.time() - self.retention_s
        expired = [task_id for task_id, record in self.tasks.items()
                   if not record.status.active and (record.finished_epoch or 0) < cutoff]
        for task_id in expired:
            record = self.tasks.pop(task_id)
            await asyncio.to_thread(self.store.delete, task_id + task_codec.FILE_SUFFIX)
            if record.result:
                await asyncio.to_thread(self.outputs.delete, record.result.file_name)
        return expired

    # -- API -----------------------------------------------------------------------------------------

    async def submit(self, job: SynthesisJob, fmt: str, sample_rate: int) -> TaskRecord:
        """Queue a job; the record is persisted before it is returned."""
        self._ensure_loops()
        queued = sum(1 for record in self.tasks.values() if record.status is TaskState.PENDING)
        if queued >= self.max_queued:
            raise QueueFullError(queued, retry_after_s=max(1, int(queued / self.max_running) * 5))
        task_id = f"task_{secrets.token_hex(6)}"
        while task_id in self.tasks:
            task_id = f"task_{secrets.token_hex(6)}"
        record = TaskRecord(task_id=task_id, mode=SynthesisMode(job.mode), status=TaskState.PENDING, progress=0.0,
                            created_at=now_iso())
        self.tasks[task_id] = record
        await self._persist(record)
        self.pending[task_id] = _Pending(job, fmt, sample_rate)
        self.queue.append(task_id)
        self.wakeup.set()
        return record

    def get(self, task_id: str) -> TaskRecord:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise TaskNotFoundError(task_id) from None

    async def cancel(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if not record.status.active:
            raise TaskStateError(task_id, record.status)
        self._finish(record, TaskState.CANCELLED, "cancelled by request")
        self.pending.pop(task_id, None)
        chunks = self.running.get(task_id)
        if chunks is not None:
            chunks.cancel()  # cancels the pipeline's synthesis, and with it the LLM's stream
        await self._persist(record)
        return record

    def list(self, status: str | None = None, limit: int = 50) -> tuple[list[TaskRecord], int]:
        """The newest `limit` tasks in `status` (any if None), and how many match in all."""
        matches = [record for record in self.tasks.values() if status is None or record.status == status]
        matches.sort(key=lambda record: (record.created_at, record.task_id), reverse=True)
        return matches[:limit], len(matches)

    def counts(self) -> dict[str, int]:
        counts = {str(state): 0 for state in TaskState}
        for record in self.tasks.values():
            counts[record.status] += 1
        return counts

    def ready(self) -> bool:
        return True


def _reason(exc: BaseException) -> str:
    """A readable reason from a (possibly Ray-wrapped) exception."""
    cause = root_cause(exc)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip().rstrip(":")


def task_manager_actor(settings: Settings) -> Any:
    """The application's task manager actor."""
    return named_detached_actor(TaskManager, settings.app_name, ROLE, settings.task_store_uri,
                                settings.output_store_uri, settings.app_name, settings.max_queued_tasks,
                                settings.max_running_tasks, settings.task_retention_s,
                                max_task_retries=0, max_concurrency=64)


def task_manager_by_name(app_name: str) -> Any:
    return existing_actor(app_name, ROLE)
