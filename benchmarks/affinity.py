"""`cosyvoice-serve bench-flow-affinity`: do a stream's chunks reach the flow replica holding its state?

Starts the service with several flow replicas, sends concurrent streamed requests, then asks every
flow replica how it decoded the streamed chunks it got: a stream's first chunk, a later chunk
continued from the state the replica kept (`cached`), or a later chunk decoded from the start
because the replica lacked that state (`from_start`: the full decode that routing by stream
avoids). `--router power-of-two` runs Serve's default router instead, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

from benchmarks.clients import ServiceProtocol, run_level, wait_ready
from benchmarks.options import add_common_arguments, model_options, positive_int
from benchmarks.service import APP_NAME, LocalService
from benchmarks.workload import BenchRequest, Speaker, build_workload

ROUTERS = ("stream-affinity", "power-of-two")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--streams", type=positive_int, default=8, metavar="N",
                        help="streamed requests in flight at once (default 8)")
    parser.add_argument("--requests", type=positive_int, default=32, metavar="N",
                        help="streamed requests in all (default 32)")
    parser.add_argument("--sentences", type=positive_int, default=4, metavar="N",
                        help="workload sentences spoken by each request, so its streams run several chunks "
                             "(default 4)")
    parser.add_argument("--flow-replicas", type=positive_int, default=2, metavar="N",
                        help="flow decoder replicas (default 2)")
    parser.add_argument("--router", choices=ROUTERS, default=ROUTERS[0],
                        help="how calls reach flow replicas: by stream (the service's) or Serve's default "
                             "power-of-two-choices router (what the service did before)")


def deployment_options(router: str, replicas: int) -> dict[str, dict[str, Any]]:
    from ray.serve.config import RequestRouterConfig

    flow: dict[str, Any] = {"num_replicas": replicas}
    if router == "power-of-two":
        flow["request_router_config"] = RequestRouterConfig()
    return {"FlowDecoder": flow}


def long_requests(count: int, sentences: int, seed: int) -> list[BenchRequest]:
    """`count` requests, each speaking `sentences` consecutive sentences of the workload."""
    texts = [request.text for request in build_workload(count * sentences)]
    return [BenchRequest(index=index, text=" ".join(texts[index * sentences:(index + 1) * sentences]),
                         seed=seed + index) for index in range(count)]


def replica_stats(replicas: int, attempts: int = 200) -> list[dict[str, Any]]:
    """Every flow replica's `stream_stats`, reached through calls under random session ids."""
    from ray import serve

    handle = serve.get_deployment_handle("FlowDecoder", app_name=APP_NAME)
    found: dict[str, dict[str, Any]] = {}
    for _ in range(attempts):
        stats = handle.options(session_id=uuid.uuid4().hex).stream_stats.remote().result(timeout_s=60)
        found[stats["replica"]] = stats
        if len(found) == replicas:
            break
    return sorted(found.values(), key=lambda stats: stats["replica"])


def summarize(per_replica: list[dict[str, Any]]) -> dict[str, Any]:
    chunks = {kind: sum(stats["chunks"].get(kind, 0) for stats in per_replica)
              for kind in ("first", "cached", "from_start")}
    seconds = {kind: sum(stats["seconds"].get(kind, 0.0) for stats in per_replica) for kind in chunks}
    later = chunks["cached"] + chunks["from_start"]
    return {"chunks": chunks,
            "full_decodes_per_100_later_chunks": round(100 * chunks["from_start"] / later, 1) if later else None,
            "flow_ms_per_chunk": {kind: round(1000 * seconds[kind] / chunks[kind], 1) if chunks[kind] else None
                                  for kind in chunks},
            "flow_ms_per_later_chunk": round(1000 * (seconds["cached"] + seconds["from_start"]) / later, 1)
            if later else None}


def run(args: argparse.Namespace) -> int:
    """Print each replica's counts, then one JSON line; 0 when every request succeeded."""
    model = model_options(args)
    options = deployment_options(args.router, args.flow_replicas)

    async def drive(base_url: str) -> list[Any]:
        protocol = ServiceProtocol()
        await wait_ready(base_url, protocol)
        voice_id = args.voice or await protocol.default_voice(base_url)
        requests = long_requests(args.requests, args.sentences, args.seed)
        results, _ = await run_level(base_url, protocol, requests, args.streams, True, Speaker("sft", voice_id))
        return results

    with LocalService(model.model_dir, model.dtype, model.torch_threads, deployment_options=options) as service:
        results = asyncio.run(drive(service.base_url))
        per_replica = replica_stats(args.flow_replicas)
    failures = [result.error for result in results if result.error]
    for stats in per_replica:
        print(f"flow replica {stats['replica']}: {stats['chunks']}")
    report = {"router": args.router, "flow_replicas": args.flow_replicas, "streams": args.streams,
              "requests": args.requests, "sentences": args.sentences, "failures": len(failures),
              **summarize(per_replica), "per_replica": per_replica, "model": str(model.model_dir), "dtype": model.dtype}
    print(json.dumps(report), flush=True)
    return 1 if failures else 0
