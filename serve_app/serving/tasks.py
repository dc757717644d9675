"""Async task logic: submission with admission control, and the task manager's answers as API
responses."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from deployments.pipeline import SynthesisJob
from deployments.task_manager import CANCELLED, COMPLETED, FAILED, QueueFullError, TaskNotFoundError, TaskStateError
from serve_app.api.errors import ApiError
from serve_app.rendering import MODE_LABELS


def task_not_found(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"Task with ID '{task_id}' not found")


class TaskService:
    def __init__(self, manager: Any):
        self.manager = manager

    async def submit(self, job: SynthesisJob, fmt: str) -> dict[str, Any]:
        try:
            record = await self.manager.submit.remote(str(job.mode), job, fmt)
        except QueueFullError as exc:
            raise ApiError(503, "queue_full", f"Too many tasks are waiting ({exc.pending}); retry later",
                           headers={"Retry-After": str(exc.retry_after_s)}) from exc
        task_id = record["task_id"]
        return {"task_id": task_id, "status": "submitted",
                "message": f"{MODE_LABELS[str(job.mode)]} synthesis task submitted successfully",
                "check_status_url": f"/api/v1/async/tasks/{task_id}/status",
                "result_url": f"/api/v1/async/tasks/{task_id}/result"}

    async def status(self, task_id: str) -> dict[str, Any]:
        try:
            return await self.manager.status.remote(task_id)
        except TaskNotFoundError as exc:
            raise task_not_found(task_id) from exc

    async def result(self, task_id: str) -> dict[str, Any] | JSONResponse:
        try:
            record = await self.manager.result.remote(task_id)
        except TaskNotFoundError as exc:
            raise task_not_found(task_id) from exc
        result, status = record.pop("result"), record["status"]
        if status == COMPLETED:
            return result
        if status == FAILED:
            raise ApiError(409, "task_failed", f"Task '{task_id}' failed: {record['error']}", task_status=status)
        if status == CANCELLED:
            raise ApiError(409, "task_cancelled", f"Task '{task_id}' was cancelled", task_status=status)
        return JSONResponse(record, status_code=202)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        try:
            record = await self.manager.cancel.remote(task_id)
        except TaskNotFoundError as exc:
            raise task_not_found(task_id) from exc
        except TaskStateError as exc:
            raise ApiError(409, "task_not_cancellable", f"Task '{task_id}' is {exc.status} and cannot be cancelled",
                           task_status=exc.status) from exc
        return {"task_id": task_id, "status": record["status"], "message": f"Task '{task_id}' cancelled"}

    async def list(self, status: str | None, limit: int) -> dict[str, Any]:
        return await self.manager.list.remote(status, limit)
