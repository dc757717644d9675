"""`cosyvoice-serve bench`: options, and the order of the benchmark's phases.

1. The service: started on a private Ray instance (or the one at --url), warmed up, then driven
   over HTTP at each concurrency in each mode while its processes' memory is sampled. Then the
   overhead pairs: requests sent one at a time, each also run through the in-process path. Then
   the service is shut down, so the next phase has the machine to itself.
2. The server at --compare-url, if given: the same warm-up and levels, in its protocol.
3. The baseline, in a child process: the same requests at the same concurrencies and modes.
4. The report: a table, then one JSON object as the last line of stdout.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.clients import PROTOCOLS, ServerProtocol, ServiceProtocol, protocol_for
from benchmarks.flow_metrics import DEFAULT_EXPORT_INTERVAL_S, FAST_EXPORT_INTERVAL_S
from benchmarks.options import ModelOptions, add_common_arguments, model_options, positive_int
from benchmarks.report import compose, format_table
from benchmarks.workload import MODES, WORKLOADS, LevelRun, RequestResult, Speaker, build_workload, warmup_request

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
    parser.add_argument("--workload", choices=WORKLOADS, default="sft",
                        help="sft: a pretrained voice by id (default); zero-shot: a 3 s prompt recording and its "
                             "transcript uploaded with every request")
    parser.add_argument("--concurrency", type=_int_list, default=None,
                        help="comma-separated concurrency levels (default 1,4,8,16; --quick: 1,2)")
    parser.add_argument("--requests", type=positive_int, default=None,
                        help=f"requests per level and mode (default max(2 x concurrency, {MIN_REQUESTS}); "
                             "--quick: 2 x concurrency)")
    parser.add_argument("--modes", type=_modes, default=MODES, help="comma-separated: stream,whole (default both)")
    parser.add_argument("--url", help="benchmark the service already running at this base URL instead of starting "
                                      "one (its memory and start-up are then not measured; give the --model-dir it "
                                      "serves)")
    parser.add_argument("--flow-stream-cache-mb", type=float, default=None, metavar="MB",
                        help="the started service's flow_stream_cache_mb (default: the setting's default)")
    parser.add_argument("--flow-stream-final-chunk", choices=("full", "incremental"), default=None,
                        help="the started service's flow_stream_final_chunk (default: the setting's default, full)")
    parser.add_argument("--metrics-url", help="with --url: that service's Prometheus endpoint (Ray's "
                                              "--metrics-export-port, e.g. http://host:8080/metrics), for how the "
                                              "flow decoded streamed chunks")
    parser.add_argument("--compare-url", help="also drive the server at this base URL with the same workload (after "
                                              "the service has stopped), e.g. the one you run now")
    parser.add_argument("--compare-protocol", choices=PROTOCOLS, default="cosyvoice-serve",
                        help="the API of --compare-url: cosyvoice-serve (this service) or upstream (CosyVoice's own "
                             "FastAPI server, runtime/python/fastapi/server.py: whole mode only)")
    parser.add_argument("--compare-sample-rate", type=positive_int, default=24000,
                        help="sample rate of the raw PCM an upstream server answers with (default 24000, CosyVoice2)")
    parser.add_argument("--compare-pid", type=positive_int,
                        help="PID of the --compare-url server, when it runs on this machine: its process tree's PSS "
                             "and peak RSS are then reported")
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
    workload: str = "sft"
    compare_url: str | None = None
    compare_protocol: str = "cosyvoice-serve"
    compare_sample_rate: int = 24000
    compare_pid: int | None = None
    metrics_url: str | None = None
    #: Settings of a service started here, beyond the model's (`tts_core.settings.Settings`).
    service_settings: dict[str, Any] = field(default_factory=dict)

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
                        seed=args.seed, baseline=not args.no_baseline, workload=args.workload,
                        compare_url=args.compare_url.rstrip("/") if args.compare_url else None,
                        compare_protocol=args.compare_protocol, compare_sample_rate=args.compare_sample_rate,
                        compare_pid=args.compare_pid, metrics_url=args.metrics_url,
                        service_settings={name: value for name in ("flow_stream_cache_mb", "flow_stream_final_chunk")
                                          if (value := getattr(args, name)) is not None})


@dataclass
class ServerRun:
    """One server driven through the workload: the service, or the one at --compare-url."""

    runs: list[LevelRun]
    speaker: Speaker
    #: The first request of each mode, before any measured one.
    warmup_s: dict[str, float]
    #: PSS snapshots ("ready": after the warm-up; "after_run"), when its processes are known.
    memory: dict[str, Any] = field(default_factory=dict)
    #: Start to ready (a server started here only).
    startup: dict[str, Any] | None = None
    #: (service, in-process) results of the same whole-mode requests, sent alternately.
    pairs: list[tuple[RequestResult, RequestResult]] = field(default_factory=list)


async def speaker_for(base_url: str, protocol: ServerProtocol, options: BenchOptions) -> Speaker:
    if options.workload == "zero-shot":
        return Speaker.zero_shot()
    return Speaker("sft", voice_id=options.voice or await protocol.default_voice(base_url))


async def drive(base_url: str, protocol: ServerProtocol, options: BenchOptions,
                processes: Callable[[], list[Any]] | None = None, label: str = "service",
                metrics_url: str | None = None, export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S,
                must_warm_up: bool = True) -> ServerRun:
    """Warm a server up, then run every level in the modes it offers; `processes` lists its
    processes (None: not measurable); `metrics_url`, its Prometheus endpoint (exported to every
    `export_interval_s`), for how the flow decoded each streamed level's chunks. Unless
    `must_warm_up`, a failed warm-up request is logged and the levels run."""
    import httpx

    from benchmarks.clients import REQUEST_TIMEOUT, run_level, wait_ready
    from benchmarks.flow_metrics import difference, settled_counters
    from benchmarks.memory import UsageSampler, pss_snapshot

    await wait_ready(base_url, protocol)
    speaker = await speaker_for(base_url, protocol, options)
    modes = [mode for mode in options.modes if mode == "whole" or protocol.streams]
    if len(modes) < len(options.modes):
        logger.warning("%s (%s protocol) has no streaming mode; its stream levels are skipped", label, protocol.name)
    warmup_s = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for mode in modes:
            warm = await protocol.request(client, warmup_request(), mode == "stream", speaker)
            if not warm.ok:
                if must_warm_up:
                    raise RuntimeError(f"the {label} failed its warm-up request: {warm.error}")
                # Another server's failures are figures of its levels, as its requests' are.
                logger.warning("the %s failed its %s warm-up request: %s", label, mode, warm.error)
            warmup_s[mode] = round(warm.latency_s, 3)
    memory = {"ready": await asyncio.to_thread(lambda: pss_snapshot(processes()))} if processes is not None else {}
    runs = []
    settled = None  # the counts after the last streamed level: only streams move them
    for mode, concurrency, count in options.levels():
        if mode not in modes:
            continue
        counted = metrics_url is not None and mode == "stream"
        if counted and settled is None:
            settled = await settled_counters(metrics_url, export_interval_s)
        before = settled
        sampler = UsageSampler(processes) if processes is not None else None
        with sampler if sampler is not None else contextlib.nullcontext():
            results, wall = await run_level(base_url, protocol, build_workload(count, options.seed), concurrency,
                                            mode == "stream", speaker)
        if counted:
            settled = await settled_counters(metrics_url, export_interval_s)
        runs.append(LevelRun(mode=mode, concurrency=concurrency, wall_s=wall, results=results,
                             peak_rss_bytes=sampler.peak_bytes if sampler is not None else None,
                             cpu_s=sampler.cpu_seconds if sampler is not None else None,
                             flow_counts=difference(settled, before) if counted else None))
        failed = sum(not result.ok for result in results)
        logger.info("%s %s c=%d: %d requests in %.1f s%s", label, mode, concurrency, count, wall,
                    f", {failed} failed" if failed else "")
    if processes is not None:
        memory["after_run"] = await asyncio.to_thread(lambda: pss_snapshot(processes()))
    return ServerRun(runs=runs, speaker=speaker, warmup_s=warmup_s, memory=memory)


async def measure_overhead(base_url: str, options: BenchOptions, speaker: Speaker
                           ) -> list[tuple[RequestResult, RequestResult]]:
    """Each request once through the service and once in-process, alternating which goes first
    so that drift in the machine's speed falls on both sides alike."""
    import httpx

    from benchmarks.clients import REQUEST_TIMEOUT
    from benchmarks.inprocess import load_inprocess

    protocol = ServiceProtocol()
    pipeline = await asyncio.to_thread(load_inprocess, str(options.model_dir), options.dtype, speaker,
                                       options.inprocess_threads)
    await asyncio.to_thread(pipeline.request, warmup_request())
    pairs = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT) as client:
        for request in build_workload(options.overhead_requests(), options.seed):
            if request.index % 2 == 0:
                remote = await protocol.request(client, request, False, speaker)
                local = await asyncio.to_thread(pipeline.request, request)
            else:
                local = await asyncio.to_thread(pipeline.request, request)
                remote = await protocol.request(client, request, False, speaker)
            pairs.append((remote, local))
    return pairs


async def drive_service(base_url: str, options: BenchOptions, service: Any = None) -> ServerRun:
    """The service's levels, then the overhead pairs; `service`: a `LocalService` started here."""
    processes = service.processes if service is not None else None
    if service is not None:
        metrics = {"metrics_url": service.metrics_url, "export_interval_s": service.metrics_export_interval_s}
    else:
        metrics = {"metrics_url": options.metrics_url, "export_interval_s": DEFAULT_EXPORT_INTERVAL_S}
    run = await drive(base_url, ServiceProtocol(), options, processes, **metrics)
    if service is not None:
        run.startup = dict(await asyncio.to_thread(service.startup), warmup_s=run.warmup_s)
    run.pairs = await measure_overhead(base_url, options, run.speaker)
    logger.info("overhead: %d request pairs", len(run.pairs))
    return run


def run_service(options: BenchOptions) -> ServerRun:
    if options.url:
        return asyncio.run(drive_service(options.url, options))
    from benchmarks.service import LocalService

    # Ray's default export interval: a shorter one costs the service CPU during the levels (0.07 of a
    # core on 2 cores). --quick, whose figures are not for comparing, reads its counts sooner.
    export_interval_s = FAST_EXPORT_INTERVAL_S if options.quick else DEFAULT_EXPORT_INTERVAL_S
    with LocalService(options.model_dir, options.dtype, options.torch_threads, settings=options.service_settings,
                      metrics_export_interval_s=export_interval_s) as service:
        return asyncio.run(drive_service(service.base_url, options, service))


def run_compare(options: BenchOptions) -> ServerRun:
    from benchmarks.memory import process_tree

    protocol = protocol_for(options.compare_protocol, options.compare_sample_rate)
    processes = process_tree(options.compare_pid) if options.compare_pid else None
    return asyncio.run(drive(options.compare_url, protocol, options, processes, label="compared server",
                             must_warm_up=False))


def _stderr_fd() -> int | None:
    """Where the child's output goes: our stderr, so stdout stays the table and the JSON line."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None


def run_baseline(options: BenchOptions, speaker: Speaker) -> dict[str, Any]:
    """The baseline in a child process (see `benchmarks.baseline`): its levels, torch threads,
    start-up and memory."""
    from benchmarks.baseline import BaselinePlan

    plan = BaselinePlan(model_dir=str(options.model_dir), dtype=options.dtype, voice_id=speaker.voice_id,
                        levels=options.levels(), seed=options.seed, workload=options.workload)
    with tempfile.TemporaryDirectory(prefix="cvbench-") as workdir:
        plan_path, result_path = Path(workdir) / "plan.json", Path(workdir) / "result.json"
        plan_path.write_text(json.dumps(asdict(plan)))
        launched = time.time()
        completed = subprocess.run([sys.executable, "-m", "benchmarks.baseline", str(plan_path),
                                    str(result_path)], stdout=_stderr_fd(), check=False)
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"the baseline process failed (exit status {completed.returncode})")
        result = json.loads(result_path.read_text())
    result["levels"] = [LevelRun.from_dict(level) for level in result["levels"]]
    times = result.pop("times")
    # The OS dates a process to its clock tick, which may fall just before `launched`.
    created = max(times["created"], launched)
    result["startup"] = {"ready_s": round(times["loaded"] - launched, 2),
                         "phases": {"process_start_s": round(created - launched, 2),
                                    "imports_s": round(times["imported"] - created, 2),
                                    "model_load_s": round(times["loaded"] - times["imported"], 2)},
                         "warmup_s": result.pop("warmup_s")}
    return result


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every service request succeeded (the baseline and a compared
    server may fail requests)."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    options = resolve_options(args)
    logger.info("benchmarking %s (%s, %s): modes %s, concurrency %s", options.model_dir, options.dtype,
                options.workload, ",".join(options.modes), ",".join(map(str, options.concurrency)))
    service = run_service(options)
    compare, compare_error = None, None
    if options.compare_url:
        try:
            compare = run_compare(options)
        except Exception as exc:  # the service's and the baseline's figures still stand
            logger.exception("the compared server at %s could not be measured", options.compare_url)
            compare_error = f"{type(exc).__name__}: {exc}"
    baseline = run_baseline(options, service.speaker) if options.baseline else None
    meta = {"model": str(options.model_dir), "size": options.size, "dtype": options.dtype, "quick": options.quick,
            "workload": options.workload, "service": options.url or "local", "voice_id": service.speaker.voice_id,
            "seed": options.seed, "modes": list(options.modes), "concurrency": list(options.concurrency),
            "cpus": os.cpu_count(), "service_torch_threads": options.torch_threads,
            "service_settings": options.service_settings,
            "baseline_torch_threads": baseline["torch_threads"] if baseline else None,
            "compare": {"url": options.compare_url, "protocol": options.compare_protocol, "pid": options.compare_pid,
                        "error": compare_error} if options.compare_url else None,
            # Other work on the machine skews every figure; the 1-minute load average says how much there was.
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "pss_mb": {"service": _pss_mb(service.memory), "baseline": _pss_mb(baseline["memory"] if baseline else {}),
                       "compare": _pss_mb(compare.memory) if compare else None},
            "startup": {"service": service.startup, "baseline": baseline["startup"] if baseline else None},
            "memory": {"service": service.memory or None, "baseline": baseline["memory"] if baseline else None,
                       "compare": (compare.memory or None) if compare else None}}
    report = compose(meta, service.runs, baseline["levels"] if baseline else [], service.pairs,
                     compare.runs if compare else None)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    line = json.dumps(report)
    if args.output:
        Path(args.output).write_text(line + "\n")
    print(format_table(report))
    print(line, flush=True)
    return 0 if all(result.ok for run in service.runs for result in run.results) else 1


def _pss_mb(memory: dict[str, Any]) -> float | None:
    """The process tree's PSS after the run (None where it was not measured)."""
    return memory["after_run"]["pss_mb"] if "after_run" in memory else None
