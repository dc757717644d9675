"""Where a started service's start-up time went, replica by replica, read from Ray's own logs.

Serve's controller logs when it asks for each replica and when the replica is up, with the
replica's PID and how long its constructor took (for a model stage: building and loading its part
of the model); the replica's own log says when its constructor began. The process's creation
time comes from the OS. Together, per replica:

- process_start_s: from the controller's request to the worker process's creation (0 when Ray
  had a worker process ready);
- imports_s: from then to the constructor's start (Python, Ray, the deployment's module, torch);
- constructor_s: the constructor, reconfigure and first health check, as the controller logs it;
- ready_at_s: when the controller saw it up, counted from the service's start.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

_STAMP = r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_REPLICA = r"Replica\(id='(?P<id>[^']+)', deployment='(?P<deployment>[^']+)', app='[^']*'\)"
STARTING = re.compile(rf"^\w+ {_STAMP} controller \d+ -- Starting {_REPLICA}")
STARTED = re.compile(rf"^\w+ {_STAMP} controller \d+ -- {_REPLICA} started successfully .*\(PID: (?P<pid>\d+)\)\. "
                     r"Replica constructor, reconfigure method, and initial health check took (?P<init>[\d.]+)s")
INITIALIZING = re.compile(rf"^\w+ {_STAMP} \S+ (?P<id>\S+) -- Started initializing replica\.")


def log_time(stamp: str) -> float:
    """A Ray log timestamp (local time, milliseconds) as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def process_start_times(processes: list[psutil.Process]) -> dict[int, float]:
    """Each live process's creation time by PID (read while the service runs)."""
    times = {}
    for process in processes:
        try:
            times[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return times


def replica_startup(serve_logs: Path, started_at: float, created: dict[int, float]) -> list[dict[str, Any]]:
    """Each replica's start-up, from the Serve log folder of a Ray session (`.../logs/serve`).

    `started_at`: when the service's start began (epoch seconds); `created`: process creation
    times by PID. Replicas missing from the logs are left out: the breakdown is where it can be had.
    """
    requested: dict[str, float] = {}
    ready: dict[str, dict[str, Any]] = {}
    for path in sorted(serve_logs.glob("controller_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if match := STARTING.match(line):
                requested.setdefault(match["id"], log_time(match["stamp"]))
            elif match := STARTED.match(line):
                ready[match["id"]] = {"deployment": match["deployment"], "pid": int(match["pid"]),
                                      "at": log_time(match["stamp"]), "constructor_s": float(match["init"])}
    initializing: dict[str, float] = {}
    for path in sorted(serve_logs.glob("replica_*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if match := INITIALIZING.match(line):
                initializing.setdefault(match["id"], log_time(match["stamp"]))
    rows = []
    for replica_id, up in sorted(ready.items(), key=lambda item: item[1]["at"]):
        if replica_id not in requested or replica_id not in initializing:
            continue
        asked, constructing = requested[replica_id], initializing[replica_id]
        process_ready = max(asked, created.get(up["pid"], asked))
        rows.append({"deployment": up["deployment"], "replica": replica_id, "pid": up["pid"],
                     "process_start_s": round(process_ready - asked, 2),
                     "imports_s": round(max(constructing - process_ready, 0.0), 2),
                     "constructor_s": round(up["constructor_s"], 2),
                     "ready_at_s": round(up["at"] - started_at, 2)})
    return rows
