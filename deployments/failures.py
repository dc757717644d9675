"""Failures that mean a replica or actor is gone (dead, restarting, not yet replaced), as opposed
to a bad request or a bug: a call that failed this way may succeed on another or a restarted
replica, and the API answers it with 503 and `Retry-After` rather than 500.

Torch-free: the pipeline and the HTTP edge both use it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.exceptions import NodeDiedError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

#: What a 503 tells clients to wait before retrying.
RETRY_AFTER_S = 5


class StageUnavailableError(RuntimeError):
    """A stage stayed unavailable for longer than the pipeline waits for it."""

    def __init__(self, stage: str, waited_s: float):
        super().__init__(f"the {stage} stage was unavailable for {waited_s:.0f} s")
        self.stage, self.waited_s = stage, waited_s

    def __reduce__(self) -> tuple:  # Ray re-raises errors in the caller by pickling them
        return type(self), (self.stage, self.waited_s)


REPLICA_GONE = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError,
                DeploymentUnavailableError, StageUnavailableError)


def root_cause(exc: BaseException) -> BaseException:
    """The error a remote call really failed with: Ray wraps it once per process it crossed."""
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None and exc.cause is not exc:
        exc = exc.cause
    return exc


def replica_gone(exc: BaseException) -> bool:
    return isinstance(exc, REPLICA_GONE) or isinstance(root_cause(exc), REPLICA_GONE)


class ReplicaRecovery:
    """How long one stage call may keep failing because its replica is gone.

    The clock starts at the first such failure and restarts whenever the call makes progress;
    `wait` sleeps before the next attempt (backing off), and raises `StageUnavailableError`
    once the stage has been gone for `timeout_s`.
    """

    def __init__(self, stage: str, timeout_s: float):
        self.stage, self.timeout_s = stage, timeout_s
        self.since: float | None = None
        self.delay_s = 0.0

    def remaining_s(self) -> float | None:
        """Time left to wait for a replica, or None while the stage is healthy."""
        return None if self.since is None else max(0.0, self.since + self.timeout_s - time.monotonic())

    def progressed(self) -> None:
        self.since, self.delay_s = None, 0.0

    async def bounded(self, awaitable: Any) -> Any:
        """Await a call: without a limit while the stage is healthy; while it recovers, only for
        the time left (then the stage counts as unavailable)."""
        remaining = self.remaining_s()
        if remaining is None:
            return await awaitable
        try:
            async with asyncio.timeout(remaining) as deadline:
                return await awaitable
        except TimeoutError as exc:
            if deadline.expired():
                raise StageUnavailableError(self.stage, self.timeout_s) from exc
            raise

    async def wait(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
        remaining = self.remaining_s()
        if not remaining:
            raise StageUnavailableError(self.stage, self.timeout_s) from exc
        self.delay_s = min(2.0, max(0.25, 2 * self.delay_s))
        await asyncio.sleep(min(self.delay_s, remaining))
