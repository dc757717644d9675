"""`cosyvoice-serve bench`: options, and the order of the benchmark's phases.

1. The service: started on a private Ray instance (or the one at --url), warmed up, then driven
   over HTTP at each concurrency in each mode while its processes' memory is sampled. Then the
   overhead pairs: requests sent one at a time, each also run through the in-process path. Then
   the service is shut down, so the next phase has the machine to itself.
2. The baseline, in a child process: the same requests at the same concurrencies and modes.
3. The report: a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.options import ModelOptions, add_common_arguments, model_options, positive_int
from benchmarks.report import compose, format_table
from benchmarks.workload import MODES, LevelRun, RequestResult, build_workload, warmup_request

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = (1, 4, 8, 16)
QUICK_CONCURRENCY = (1, 2)
#: Requests per level: twice the concurrency (every client sends at least two), and at least
#: this many so the concurrency-1 figures (and the overhead median) rest on several requests.
MIN_REQUESTS = 8


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def _modes(text: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [value for value in values if value not in MODES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"modes are a comma-separated subset of {','.join(MODES)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--concurrency", type=_int_list, default=None,
                        help="comma-separated concurrency levels (default 1,4,8,16; --quick: 1,2)")
    parser.add_argument("--requests", type=positive_int, default=None,
                        help=f"requests per level and mode (default max(2 x concurrency, {MIN_REQUESTS}); "
                             "--quick: 2 x concurrency)")
    parser.add_argument("--modes", type=_modes, default=MODES, help="comma-separated: stream,whole (default both)")
    parser.add_argument("--url", help="benchmark the service already running at this base URL instead of starting "
                                      "one (its memory is then not measured; give the --model-dir it serves)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the upstream baseline (service figures "
                                                                   "and overhead only)")
    parser.add_argument("--quick", action="store_true",
                        help="CI short mode: tiny twin, concurrency 1 and 2, few requests, both modes")
    parser.add_argument("--output", help="also write the JSON report to this file")


@dataclass
class BenchOptions(ModelOptions):
    concurrency: tuple[int, ...]
    modes: tuple[str, ...]
    requests: int | None
    quick: bool
    url: str | None
    voice: str | None
    seed: int
    baseline: bool

    def requests_for(self, concurrency: int) -> int:
        if self.requests is not None:
            return self.requests
        return 2 * concurrency if self.quick else max(2 * concurrency, MIN_REQUESTS)

    def overhead_requests(self) -> int:
        return max(self.requests_for(1), 4)

    def levels(self) -> list[tuple[str, int, int]]:
        return [(mode, concurrency, self.requests_for(concurrency))
                for mode in self.modes for concurrency in self.concurrency]


def resolve_options(args: argparse.Namespace) -> BenchOptions:
    if args.quick and args.size != "tiny":
        logger.warning("--quick runs the tiny twin; ignoring --size %s", args.size)
    model = model_options(args, size="tiny" if args.quick else args.size)
    concurrency = args.concurrency or (QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
    return BenchOptions(**vars(model), concurrency=concurrency, modes=args.modes, requests=args.requests,
                        quick=args.quick, url=args.url.rstrip("/") if args.url else None, voice=args.voice,
                        seed=args.seed, baseline=not args.no_baseline)


@dataclass
class ServicePhase:
    runs: list[LevelRun]
    voice_id: str
    #: (service, in-process) results of the same whole-mode requests, sent alternately.
    pairs: list[tuple[RequestResult, RequestResult]]
    pss_bytes: int | None


async def measure_overhead(base_url: str, options: BenchOptions, voice_id: str
                           ) -> list[tuple[RequestResult, RequestResult]]:
    """Each request once through the service and once in-process, alternating which goes first
    so that drift in the machine's speed falls on both sides alike."""
    import httpx

    from benchmarks.inprocess import load_inprocess
    from benchmarks.service import REQUEST_TIMEOUT, http_request

    pipeline = await asyncio.to_thread(load_inprocess, str(options.model_dir), options.dtype, voice_id,
                                       options.inprocess_threads)
    await asyncio.to_thread(pipeline.request, warmup_request())
    pairs = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for request in build_workload(options.overhead_requests(), options.seed):
            if request.index % 2 == 0:
                remote = await http_request(client, request, False, voice_id)
                local = await asyncio.to_thread(pipeline.request, request)
            else:
                local = await asyncio.to_thread(pipeline.request, request)
                remote = await http_request(client, request, False, voice_id)
            pairs.append((remote, local))
    return pairs


async def drive_service(base_url: str, options: BenchOptions, processes: Any = None) -> ServicePhase:
    """Warm the service up, run every level, then the overhead pairs; `processes` lists the
    service's processes (None: not measurable)."""
    import httpx

    from benchmarks.memory import RssSampler, pss_bytes
    from benchmarks.service import REQUEST_TIMEOUT, http_request, pick_voice, run_level, wait_ready

    await wait_ready(base_url)
    voice_id = options.voice or await pick_voice(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for mode in options.modes:
            warm = await http_request(client, warmup_request(), mode == "stream", voice_id)
            if not warm.ok:
                raise RuntimeError(f"the service failed its warm-up request: {warm.error}")
    runs = []
    for mode, concurrency, count in options.levels():
        sampler = RssSampler(processes) if processes is not None else None
        with sampler if sampler is not None else contextlib.nullcontext():
            results, wall = await run_level(base_url, build_workload(count, options.seed), concurrency,
                                            mode == "stream", voice_id)
        runs.append(LevelRun(mode=mode, concurrency=concurrency, wall_s=wall, results=results,
                             peak_rss_bytes=sampler.peak_bytes if sampler is not None else None))
        failed = sum(not result.ok for result in results)
        logger.info("service %s c=%d: %d requests in %.1f s%s", mode, concurrency, count, wall,
                    f", {failed} failed" if failed else "")
    pss = await asyncio.to_thread(lambda: pss_bytes(processes())) if processes is not None else None
    pairs = await measure_overhead(base_url, options, voice_id)
    logger.info("overhead: %d request pairs", len(pairs))
    return ServicePhase(runs=runs, voice_id=voice_id, pairs=pairs, pss_bytes=pss)


def run_service(options: BenchOptions) -> ServicePhase:
    if options.url:
        return asyncio.run(drive_service(options.url, options))
    from benchmarks.service import LocalService

    with LocalService(options.model_dir, options.dtype, options.torch_threads) as service:
        return asyncio.run(drive_service(service.base_url, options, service.processes))


def _stderr_fd() -> int | None:
    """Where the child's output goes: our stderr, so stdout stays the table and the JSON line."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None


def run_baseline(options: BenchOptions, voice_id: str) -> dict[str, Any]:
    """The baseline in a child process (see `benchmarks.baseline`): its levels, torch threads
    and memory."""
    from benchmarks.baseline import BaselinePlan

    plan = BaselinePlan(model_dir=str(options.model_dir), dtype=options.dtype, voice_id=voice_id,
                        levels=options.levels(), seed=options.seed)
    with tempfile.TemporaryDirectory(prefix="cvbench-") as workdir:
        plan_path, result_path = Path(workdir) / "plan.json", Path(workdir) / "result.json"
        plan_path.write_text(json.dumps(asdict(plan)))
        completed = subprocess.run([sys.executable, "-m", "benchmarks.baseline", str(plan_path),
                                    str(result_path)], stdout=_stderr_fd(), check=False)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"the baseline process failed (exit status {completed.returncode})")
        result = json.loads(result_path.read_text())
    result["levels"] = [LevelRun.from_dict(level) for level in result["levels"]]
    return result


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every service request succeeded (the baseline may fail requests)."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    options = resolve_options(args)
    logger.info("benchmarking %s (%s): modes %s, concurrency %s", options.model_dir, options.dtype,
                ",".join(options.modes), ",".join(map(str, options.concurrency)))
    service = run_service(options)
    baseline = run_baseline(options, service.voice_id) if options.baseline else None
    meta = {"model": str(options.model_dir), "size": options.size, "dtype": options.dtype, "quick": options.quick,
            "service": options.url or "local", "voice_id": service.voice_id, "seed": options.seed,
            "modes": list(options.modes), "concurrency": list(options.concurrency), "cpus": os.cpu_count(),
            "service_torch_threads": options.torch_threads,
            "baseline_torch_threads": baseline["torch_threads"] if baseline else None,
            # Other work on the machine skews every figure; the 1-minute load average says how much there was.
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "pss_mb": {"service": _mb(service.pss_bytes), "baseline": _mb(baseline["pss_bytes"] if baseline else None)}}
    report = compose(meta, service.runs, baseline["levels"] if baseline else [], service.pairs)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    line = json.dumps(report)
    if args.output:
        Path(args.output).write_text(line + "\n")
    print(format_table(report))
    print(line, flush=True)
    return 0 if all(result.ok for run in service.runs for result in run.results) else 1


def _mb(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)
