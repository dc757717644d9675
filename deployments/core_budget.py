"""Sharing a node's cores between the model replicas on it, forward pass by forward pass.

One fixed thread count per replica either leaves cores idle (one busy stage at low load) or
oversubscribes them (every stage busy). Instead each forward pass takes the cores that the
forwards running in other replicas of the node leave free, at least one: a lone request runs
on the whole machine, and under load the stages split it. What is taken is kept in one small
file per node and application in shared memory, under an advisory lock; entries of processes that
died mid-forward are dropped when read, so a killed replica never holds cores.

A pass can be urgent: a stream's first flow chunk, which a listener who has heard nothing yet is
waiting for. A stage that yields (the LLM, whose later tokens no listener is waiting for yet)
starts no pass while another process runs an urgent one, so the urgent pass has every core from
its next step on instead of sharing them with the LLM to its end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

#: How often a yielding stage looks whether the urgent passes it waits for have ended.
URGENT_POLL_S = 0.01


def node_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CoreBudget:
    """`with budget.forward():` sizes torch's intra-op threads for one forward pass."""

    def __init__(self, name: str, cores: int | None = None):
        folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.path = folder / f"cosyvoice-cores-{name}"
        self.cores = cores or node_cores()
        self.pid = os.getpid()
        #: Whether a forward pass is under way, its cap (`forward`'s `limit`) and its urgency.
        self.in_forward = False
        self.limit: int | None = None
        self.urgent = False

    @contextlib.contextmanager
    def _table(self) -> Iterator[dict[int, tuple[int, bool]]]:
        """The node's grants, pid -> (threads, urgent), locked for reading and writing back."""
        with open(self.path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            file.seek(0)
            grants: dict[int, tuple[int, bool]] = {}
            for entry in file.read().split():
                pid, threads, *urgent = entry.split(":")
                if pid.isdigit() and threads.isdigit() and _alive(int(pid)):
                    grants[int(pid)] = int(threads), urgent == ["urgent"]
            yield grants
            file.seek(0)
            file.truncate()
            file.write(" ".join(f"{pid}:{threads}" + (":urgent" if urgent else "")
                                for pid, (threads, urgent) in grants.items()))

    def acquire(self, limit: int | None = None, urgent: bool = False, yields: bool = False) -> int | None:
        """Take the cores the others leave free (at least one, at most `limit`); with `yields`,
        take nothing and return None while another process runs an urgent pass."""
        with self._table() as grants:
            if yields and self._urgent_among_others(grants):
                return None
            taken = sum(threads for pid, (threads, _) in grants.items() if pid != self.pid)
            threads = max(1, min(self.cores - taken, limit or self.cores))
            grants[self.pid] = threads, urgent
            return threads

    def urgent_elsewhere(self) -> bool:
        """Whether another process is running an urgent pass."""
        with self._table() as grants:
            return self._urgent_among_others(grants)

    def _urgent_among_others(self, grants: dict[int, tuple[int, bool]]) -> bool:
        return any(urgent for pid, (_, urgent) in grants.items() if pid != self.pid)

    def release(self) -> None:
        with self._table() as grants:
            grants.pop(self.pid, None)

    @contextlib.contextmanager
    def forward(self, limit: int | None = None, urgent: bool = False, yields: bool = False) -> Iterator[int]:
        """One forward pass; `urgent`: a listener is waiting on it; `yields`: it starts only once
        no other process runs an urgent pass (they end: each is one flow chunk)."""
        self.in_forward, self.limit, self.urgent = True, limit, urgent
        try:
            while (threads := self.acquire(limit, urgent, yields)) is None:
                time.sleep(URGENT_POLL_S)
            yield self._use(threads)
        finally:
            self.in_forward = self.urgent = False
            self.release()

    def rebalance(self) -> int:
        """Inside `forward`, between two parts of a long pass: take again what the others leave
        free now. A flow chunk that started while the LLM was sampling would otherwise run on one
        core to its end, long after the LLM has finished and left the other idle. Outside a
        forward pass it holds nothing and changes nothing."""
        return self._take() if self.in_forward else torch.get_num_threads()

    def _take(self) -> int:
        return self._use(self.acquire(self.limit, self.urgent))  # type: ignore[arg-type]  # None only if it yields

    @staticmethod
    def _use(threads: int) -> int:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads
