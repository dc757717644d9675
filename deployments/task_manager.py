"""Asynchronous synthesis tasks: one named, detached Ray actor owns them all.

Each running task is a call of the pipeline deployment's `render`; its ObjectRef is created and
owned here, not in an ingress replica, so a task survives the replica that accepted it (an
ObjectRef dies with its owner). Records are persisted (one Parquet file per task, replaced
atomically) whenever their state changes; after a restart of this actor, finished tasks are
served from those files and tasks that were in flight are reported failed, with the reason.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from serve_app.storage import BlobStore

logger = logging.getLogger(__name__)

PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED = "pending", "processing", "completed", "failed", "cancelled"
ACTIVE_STATES = (PENDING, PROCESSING)
FINAL_STATES = (COMPLETED, FAILED, CANCELLED)
TASK_SUFFIX = ".parquet"
#: Progress reports are persisted at most this often (state changes always are).
PROGRESS_PERSIST_INTERVAL_S = 1.0
INTERRUPTED = "interrupted: the task manager restarted while the task was {state}"

_SCHEMA = pa.schema([("task_id", pa.string()), ("mode", pa.string()), ("status", pa.string()),
                     ("progress", pa.float64()), ("created_at", pa.string()), ("started_at", pa.string()),
                     ("completed_at", pa.string()), ("finished_epoch", pa.float64()), ("error", pa.string()),
                     ("result", pa.string())])


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


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chunk_progress(segment: int, segments: int, tokens: int, text_tokens: int, segment_done: bool) -> float:
    """Fraction of a job done after a chunk: whole segments, plus the current one's decoded tokens
    against a typical 8 speech tokens per text token (capped: 1.0 is for completion only)."""
    within = 1.0 if segment_done else min(0.9, tokens / max(1, 8 * text_tokens))
    return min(0.99, (segment + within) / max(1, segments))


class TaskManager:
    """The actor: submit, track, cancel, list and expire tasks (see the module docstring)."""

    def __init__(self, store_uri: str, outputs_uri: str, app_name: str, max_queued: int, max_running: int,
                 retention_s: float):
        self.store, self.outputs = BlobStore(store_uri), BlobStore(outputs_uri)
        self.app_name, self.retention_s = app_name, retention_s
        self.max_queued, self.max_running = max_queued, max_running
        self.tasks: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, tuple[Any, str]] = {}  # pending task id -> (job, format)
        self.queue: deque[str] = deque()
        self.running: dict[str, Any] = {}  # task id -> DeploymentResponse of the pipeline's render
        self.persisted_at: dict[str, float] = {}
        self.wakeup: asyncio.Event | None = None
        self.loops: list[asyncio.Task] = []
        self._restore()

    # -- persistence -------------------------------------------------------------------------------

    def _restore(self) -> None:
        for name in self.store.list(TASK_SUFFIX):
            try:
                table = pq.read_table(io.BytesIO(self.store.get(name)))
                record = {key: values[0] for key, values in table.to_pydict().items()}
            except Exception:
                logger.exception("task record %s is unreadable; skipped", name)
                continue
            record["result"] = json.loads(record["result"]) if record["result"] else None
            if record["status"] in ACTIVE_STATES:
                record.update(status=FAILED, error=INTERRUPTED.format(state=record["status"]),
                              completed_at=now_iso(), finished_epoch=time.time())
                self._persist(record)
            self.tasks[record["task_id"]] = record
        logger.info("task manager restored %d tasks", len(self.tasks))

    def _persist(self, record: dict[str, Any]) -> None:
        """Save a task's record; called on every state change, which is also when the gauge moves."""
        from deployments.metrics import metric

        for state, count in self.counts().items():
            metric("cosyvoice_async_tasks").set(count, tags={"state": state})
        row = dict(record, result=json.dumps(record["result"]) if record["result"] is not None else None)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row], schema=_SCHEMA), buffer)
        self.store.put(record["task_id"] + TASK_SUFFIX, buffer.getvalue())
        self.persisted_at[record["task_id"]] = time.monotonic()

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
                if task_id in self.jobs:
                    job, fmt = self.jobs.pop(task_id)
                    asyncio.get_running_loop().create_task(self._run(task_id, job, fmt))
            self.wakeup.clear()
            await self.wakeup.wait()

    async def _run(self, task_id: str, job: Any, fmt: str) -> None:
        from ray import serve

        record = self.tasks[task_id]
        record.update(status=PROCESSING, started_at=now_iso())
        self._persist(record)
        pipeline = serve.get_deployment_handle("SynthesisPipeline", app_name=self.app_name)
        response = pipeline.render.remote(job, fmt, task_id)
        self.running[task_id] = response
        try:
            ref = await response._to_object_ref()  # the task's ObjectRef, owned by this actor
            result = await ref
            record.update(status=COMPLETED, progress=1.0, result=dict(result, task_id=task_id))
        except asyncio.CancelledError:
            record.update(status=CANCELLED, error=record["error"] or "cancelled")
        except Exception as exc:
            if record["status"] != CANCELLED:  # a cancelled render ends in an error too
                logger.warning("task %s failed: %r", task_id, exc)
                record.update(status=FAILED, error=f"synthesis failed: {_reason(exc)}")
        finally:
            self.running.pop(task_id, None)
            if record["status"] == PROCESSING:  # defensive: never leave a finished run processing
                record.update(status=FAILED, error="synthesis ended without a result")
            record.update(completed_at=now_iso(), finished_epoch=time.time())
            self._persist(record)
            self.wakeup.set()

    async def _expire_forever(self, period_s: float = 60.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                self.expire()
            except Exception:
                logger.exception("task retention sweep failed")

    def expire(self) -> list[str]:
        """Forget finished tasks (and delete their audio) older than the retention period."""
        cutoff = time.time() - self.retention_s
        expired = [task_id for task_id, record in self.tasks.items()
                   if record["status"] in FINAL_STATES and (record["finished_epoch"] or 0) < cutoff]
        for task_id in expired:
            record = self.tasks.pop(task_id)
            self.store.delete(task_id + TASK_SUFFIX)
            if record["result"]:
                self.outputs.delete(record["result"]["audio_url"].rsplit("/", 1)[-1])
        return expired

    # -- API -----------------------------------------------------------------------------------------

    async def submit(self, mode: str, job: Any, fmt: str) -> dict[str, Any]:
        self._ensure_loops()
        pending = sum(1 for record in self.tasks.values() if record["status"] == PENDING)
        if pending >= self.max_queued:
            raise QueueFullError(pending, retry_after_s=max(1, int(pending / self.max_running) * 5))
        task_id = f"task_{secrets.token_hex(6)}"
        while task_id in self.tasks:
            task_id = f"task_{secrets.token_hex(6)}"
        record = {"task_id": task_id, "mode": mode, "status": PENDING, "progress": 0.0, "created_at": now_iso(),
                  "started_at": None, "completed_at": None, "finished_epoch": None, "error": None, "result": None}
        self.tasks[task_id] = record
        self._persist(record)
        self.jobs[task_id] = (job, fmt)
        self.queue.append(task_id)
        self.wakeup.set()
        return public(record)

    def report_progress(self, task_id: str, progress: float) -> None:
        """Called by the pipeline as chunks are produced; progress never decreases."""
        record = self.tasks.get(task_id)
        if record is None or record["status"] != PROCESSING:
            return
        record["progress"] = max(record["progress"], min(0.99, float(progress)))
        if time.monotonic() - self.persisted_at.get(task_id, 0.0) >= PROGRESS_PERSIST_INTERVAL_S:
            self._persist(record)

    def status(self, task_id: str) -> dict[str, Any]:
        return public(self._get(task_id))

    def result(self, task_id: str) -> dict[str, Any]:
        """The task's record plus, when completed, its result body."""
        record = self._get(task_id)
        return dict(public(record), result=record["result"])

    async def cancel(self, task_id: str) -> dict[str, Any]:
        record = self._get(task_id)
        if record["status"] not in ACTIVE_STATES:
            raise TaskStateError(task_id, record["status"])
        record.update(status=CANCELLED, error="cancelled by request", completed_at=now_iso(),
                      finished_epoch=time.time())
        self.jobs.pop(task_id, None)
        response = self.running.get(task_id)
        if response is not None:
            response.cancel()  # cancels the render in the pipeline, and with it the LLM's stream
        self._persist(record)
        return public(record)

    def list(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        matches = [record for record in self.tasks.values() if status is None or record["status"] == status]
        matches.sort(key=lambda record: (record["created_at"], record["task_id"]), reverse=True)
        return {"tasks": [public(record) for record in matches[:limit]], "total": len(matches)}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((*ACTIVE_STATES, *FINAL_STATES), 0)
        for record in self.tasks.values():
            counts[record["status"]] += 1
        return counts

    def ready(self) -> bool:
        return True

    def _get(self, task_id: str) -> dict[str, Any]:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise TaskNotFoundError(task_id) from None


def _reason(exc: BaseException) -> str:
    """A readable reason from a (possibly Ray-wrapped) exception."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip().rstrip(":")


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The API's Task object."""
    completed = record["status"] == COMPLETED
    body = {key: record[key] for key in ("task_id", "mode", "status", "progress", "created_at", "started_at",
                                         "completed_at", "error")}
    body["result_available"] = completed
    body["result_url"] = f"/api/v1/async/tasks/{record['task_id']}/result" if completed else None
    return body


async def task_manager_actor(settings: Any) -> Any:
    """The application's task manager, created by whichever replica asks first (named, detached,
    restarted by Ray if it dies)."""
    import ray

    actor_class = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)(TaskManager)
    actor = actor_class.options(name=f"{settings.app_name}-task-manager", namespace="cosyvoice-serve",
                                lifetime="detached", get_if_exists=True).remote(
        settings.task_store_uri, settings.output_store_uri, settings.app_name, settings.max_queued_tasks,
        settings.max_running_tasks, settings.task_retention_s)
    await actor.ready.remote()
    return actor


def task_manager_by_name(app_name: str) -> Any:
    import ray

    return ray.get_actor(f"{app_name}-task-manager", namespace="cosyvoice-serve")
