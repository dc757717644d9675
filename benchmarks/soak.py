"""The memory soak: many consecutive requests, and each service process's RSS after the first
`warmup` of them against its RSS at the end. A leak shows as steady growth past the warm-up."""

from __future__ import annotations

from typing import Any

import httpx
import psutil

from benchmarks.service import REQUEST_TIMEOUT, http_request
from benchmarks.workload import build_workload

#: Growth allowed between the warm-up and the end (the issue's bound).
MAX_GROWTH = 0.05


def process_rss(processes: list[psutil.Process]) -> dict[str, int]:
    """RSS by process title (Ray titles its workers, e.g. `ray::ServeReplica:cosyvoice:Vocoder`)."""
    sizes = {}
    for process in processes:
        try:
            title = (process.cmdline() or [process.name()])[0]
            sizes[f"{title} ({process.pid})"] = process.memory_info().rss
        except psutil.Error:
            continue
    return sizes


async def soak(base_url: str, processes: Any, count: int, warmup: int, seed: int, voice_id: str) -> dict[str, Any]:
    """Send `count` whole-mode requests one after another; compare per-process RSS."""
    before: dict[str, int] = {}
    failures = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for request in build_workload(count, seed):
            failures += not (await http_request(client, request, False, voice_id)).ok
            if request.index + 1 == warmup:
                before = process_rss(processes())
    after = process_rss(processes())
    rows = []
    for name, start in sorted(before.items()):
        if name in after and name.startswith("ray::"):
            rows.append({"process": name, "rss_mb_after_warmup": round(start / 2**20, 1),
                         "rss_mb_at_end": round(after[name] / 2**20, 1),
                         "growth": round(after[name] / start - 1, 4)})
    worst = max((row["growth"] for row in rows), default=0.0)
    return {"requests": count, "warmup": warmup, "failures": failures, "processes": rows,
            "max_growth": worst, "within_bound": worst <= MAX_GROWTH}
