"""`cosyvoice-serve bench-soak`: many consecutive requests to a local service, and each service
process's RSS after the first `--warmup` of them against its RSS at the end. A leak shows as
steady growth past the warm-up."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import httpx
import psutil

from benchmarks.clients import REQUEST_TIMEOUT, ServiceProtocol, wait_ready
from benchmarks.memory import process_label
from benchmarks.options import add_common_arguments, model_options, positive_int
from benchmarks.service import LocalService
from benchmarks.workload import Speaker, build_workload

#: Growth allowed between the warm-up and the end. Caches fill during the warm-up, so what grows
#: past it by more than this is taken for a leak and fails the soak.
MAX_GROWTH = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--requests", type=positive_int, default=500, metavar="N",
                        help="whole-mode requests to send, one after another (default 500)")
    parser.add_argument("--warmup", type=positive_int, default=50, metavar="N",
                        help="requests after which the starting RSS is taken (default 50, at most --requests)")


def process_rss(processes: list[psutil.Process]) -> dict[str, int]:
    """RSS by process label and PID (Ray titles its workers, e.g. `ray::ServeReplica:cosyvoice:Vocoder`)."""
    sizes = {}
    for process in processes:
        try:
            sizes[f"{process_label(process)} ({process.pid})"] = process.memory_info().rss
        except psutil.Error:
            continue
    return sizes


async def soak(base_url: str, processes: Any, count: int, warmup: int, seed: int, voice_id: str) -> dict[str, Any]:
    """Send `count` whole-mode requests one after another; compare per-process RSS."""
    protocol, speaker = ServiceProtocol(), Speaker("sft", voice_id=voice_id)
    before: dict[str, int] = {}
    failures = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for request in build_workload(count, seed):
            failures += not (await protocol.request(client, request, False, speaker)).ok
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


def run(args: argparse.Namespace) -> int:
    """Print each replica's RSS, then one JSON line; 0 when no request failed and every replica
    stayed within MAX_GROWTH."""
    model = model_options(args)

    async def drive(base_url: str, processes: Any) -> dict[str, Any]:
        await wait_ready(base_url, ServiceProtocol())
        voice_id = args.voice or await ServiceProtocol().default_voice(base_url)
        return await soak(base_url, processes, args.requests, min(args.warmup, args.requests), args.seed, voice_id)

    with LocalService(model.model_dir, model.dtype, model.torch_threads) as service:
        report = asyncio.run(drive(service.base_url, service.processes))
    for row in report["processes"]:
        print(f"{row['process'][:70]:70s} {row['rss_mb_after_warmup']:9.1f} MB -> {row['rss_mb_at_end']:9.1f} MB "
              f"({100 * row['growth']:+.2f}%)")
    print(json.dumps(dict(report, model=str(model.model_dir), dtype=model.dtype)), flush=True)
    return 0 if report["within_bound"] and not report["failures"] else 1
