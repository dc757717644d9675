"""Async task logic: submission with admission control, and the task manager's records as API
responses."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from serve_app.api.errors import ApiError
from serve_app.serving.synthesis import result_body
from tts_core.tasks import QueueFullError, TaskNotFoundError, TaskRecord, TaskState, TaskStateError
from tts_core.wire import SynthesisJob


def task_not_found(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"Task with ID '{task_id}' not found")


def task_body(record: TaskRecord) -> dict[str, Any]:
    """The API's Task object."""
    completed = record.status is TaskState.COMPLETED
    return {"task_id": record.task_id, "mode": str(record.mode), "status": str(record.status),
            "progress": record.progress, "created_at": record.created_at, "started_at": record.started_at,
            "completed_at": record.completed_at, "error": record.error, "result_available": completed,
            "result_url": f"/api/v1/async/tasks/{record.task_id}/result" if completed else None}


class TaskService:
    def __init__(self, manager: Any, sample_rate: int):
        self.manager, self.sample_rate = manager, sample_rate

    async def submit(self, job: SynthesisJob, fmt: str) -> dict[str, Any]:
        try:
            record = await self.manager.submit.remote(job, fmt, self.sample_rate)
        except QueueFullError as exc:
            raise ApiError(503, "queue_full", f"Too many tasks are waiting ({exc.pending}); retry later",
                           headers={"Retry-After": str(exc.retry_after_s)}) from exc
        task_id = record.task_id
        return {"task_id": task_id, "status": "submitted",
                "message": f"{record.mode.label} synthesis task submitted successfully",
                "check_status_url": f"/api/v1/async/tasks/{task_id}/status",
                "result_url": f"/api/v1/async/tasks/{task_id}/result"}

    async def _record(self, task_id: str) -> TaskRecord:
        try:
            return await self.manager.get.remote(task_id)
        except TaskNotFoundError as exc:
            raise task_not_found(task_id) from exc

    async def status(self, task_id: str) -> dict[str, Any]:
        return task_body(await self._record(task_id))

    async def result(self, task_id: str) -> dict[str, Any] | JSONResponse:
        record = await self._record(task_id)
        if record.status is TaskState.COMPLETED:
            return dict(result_body(record.mode, record.result), task_id=task_id)
        if record.status is TaskState.FAILED:
            raise ApiError(409, "task_failed", f"Task '{task_id}' failed: {record.error}", task_status=record.status)
        if record.status is TaskState.CANCELLED:
            raise ApiError(409, "task_cancelled", f"Task '{task_id}' was cancelled", task_status=record.status)
        return JSONResponse(task_body(record), status_code=202)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        try:
            record = await self.manager.cancel.remote(task_id)
        except TaskNotFoundError as exc:
            raise task_not_found(task_id) from exc
        except TaskStateError as exc:
            raise ApiError(409, "task_not_cancellable", f"Task '{task_id}' is {exc.status} and cannot be cancelled",
                           task_status=exc.status) from exc
        return {"task_id": task_id, "status": str(record.status), "message": f"Task '{task_id}' cancelled"}

    async def list(self, status: str | None, limit: int) -> dict[str, Any]:
        records, total = await self.manager.list.remote(status, limit)
        return {"tasks": [task_body(record) for record in records], "total": total}
