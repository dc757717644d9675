"""What a set of processes uses: peak RSS and CPU time sampled while a benchmark level runs, and
PSS per process at chosen moments."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil


class UsageSampler:
    """Samples the summed RSS of the processes `find` returns, on a background thread, and counts
    the CPU seconds they spend between entering and leaving.

    The service spreads over many Ray processes whose individual peaks need not coincide; what
    capacity planning needs is the peak of their sum, hence sampling rather than each process's
    own high-water mark. Listing processes walks /proc, which costs CPU the benchmark is
    measuring, so the list (and each process's CPU time) is refreshed less often than memory is
    read. A process that starts during the level counts from zero; one that ends counts up to
    its last reading.
    """

    def __init__(self, find: Callable[[], list[psutil.Process]], interval_s: float = 0.1, refresh_s: float = 2.0):
        self.find, self.interval_s, self.refresh_s = find, interval_s, refresh_s
        self.peak_bytes = 0
        self._processes: list[psutil.Process] = []
        self._listed_at = float("-inf")
        #: Per process: CPU seconds when the level began (absent: started since), and at its last reading.
        self._cpu_first: dict[psutil.Process, float] = {}
        self._cpu_last: dict[psutil.Process, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)

    @property
    def cpu_seconds(self) -> float:
        """User and system CPU seconds of every process seen, since entering."""
        return sum(last - self._cpu_first.get(process, 0.0) for process, last in self._cpu_last.items())

    def sample(self) -> int:
        now = time.monotonic()
        if now - self._listed_at >= self.refresh_s:
            self._processes, self._listed_at = self.find(), now
            self._read_cpu()
        total = 0
        for process in self._processes:
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _read_cpu(self) -> None:
        for process in self._processes:
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self._cpu_last[process] = times.user + times.system

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> UsageSampler:
        self.sample()
        self._cpu_first = dict(self._cpu_last)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._listed_at = float("-inf")  # a last full reading: every process's CPU time up to now
        self.sample()


def process_label(process: psutil.Process) -> str:
    """What a process is: Ray's title for its workers (`ray::ServeReplica:cosyvoice:Vocoder`,
    without the `.method` Ray appends while one runs), a Python process's script or module, else
    the executable's name."""
    cmdline = process.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0].split(".")[0]
    name = process.name()
    if name.startswith("python"):
        if script := next((Path(arg).name for arg in cmdline[1:] if arg.endswith(".py")), None):
            return f"python {script}"
        if "-m" in cmdline[:-1]:
            return f"python -m {cmdline[cmdline.index('-m') + 1]}"
    return name


def pss_snapshot(processes: list[psutil.Process]) -> dict[str, Any]:
    """Proportional set size, summed and per process label (with how many processes share it).

    PSS counts a page shared by n processes as 1/n in each (torch's libraries, mapped by every
    replica), so the sum is what the processes together take, unlike a sum of RSS. Reading it
    walks each process's page map, so it is taken at chosen moments, not sampled.
    """
    by_label: dict[str, dict[str, Any]] = {}
    total = count = 0
    for process in processes:
        try:
            pss, label = process.memory_full_info().pss, process_label(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
            continue
        entry = by_label.setdefault(label, {"processes": 0, "pss_bytes": 0})
        entry["processes"] += 1
        entry["pss_bytes"] += pss
        total, count = total + pss, count + 1
    return {"pss_mb": _mb(total), "processes": count,
            "by_process": {label: {"processes": entry["processes"], "pss_mb": _mb(entry["pss_bytes"])}
                           for label, entry in sorted(by_label.items(), key=lambda item: -item[1]["pss_bytes"])}}


def _mb(size: int) -> float:
    return round(size / 2**20, 1)


def own_process() -> list[psutil.Process]:
    return [psutil.Process()]


def descendants() -> list[psutil.Process]:
    """Every process started under this one: a Ray instance started here, all of it."""
    return psutil.Process().children(recursive=True)


def process_tree(pid: int) -> Callable[[], list[psutil.Process]]:
    """A finder for a process started elsewhere and everything under it (a server given by PID)."""
    root = psutil.Process(pid)

    def find() -> list[psutil.Process]:
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
    return find
