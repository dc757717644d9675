"""Peak resident memory of a set of processes, sampled while a benchmark level runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

import psutil


class RssSampler:
    """Samples the summed RSS of the processes `find` returns, on a background thread.

    The service spreads over many Ray processes whose individual peaks need not coincide; what
    capacity planning needs is the peak of their sum, hence sampling rather than each process's
    own high-water mark. Listing processes walks /proc, which costs CPU the benchmark is
    measuring, so the list is refreshed less often than memory is read.
    """

    def __init__(self, find: Callable[[], list[psutil.Process]], interval_s: float = 0.1, refresh_s: float = 2.0):
        self.find, self.interval_s, self.refresh_s = find, interval_s, refresh_s
        self.peak_bytes = 0
        self._processes: list[psutil.Process] = []
        self._listed_at = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> int:
        now = time.monotonic()
        if now - self._listed_at >= self.refresh_s:
            self._processes, self._listed_at = self.find(), now
        total = 0
        for process in self._processes:
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def pss_bytes(processes: list[psutil.Process]) -> int:
    """Summed proportional set size: shared pages (torch's libraries, mapped by every replica)
    counted once in total rather than once per process as an RSS sum counts them. Reading it
    walks each process's page map, so it is taken once after a run, not sampled."""
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
            continue
    return total


def own_process() -> list[psutil.Process]:
    return [psutil.Process()]


def descendants() -> list[psutil.Process]:
    """Every process started under this one: a Ray instance started here, all of it."""
    return psutil.Process().children(recursive=True)
