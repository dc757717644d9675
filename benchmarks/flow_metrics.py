"""How the flow replicas decoded a level's streamed chunks, read from the service's Prometheus
endpoint: full decodes (a later chunk whose state was gone, and every stream's full-attention
final chunk) and stream states evicted, per 100 streamed chunks."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tts_core.metrics import METRICS

#: Counter name -> its one tag, the one the counts are split by.
COUNTERS = {name: METRICS[name].tag_keys[0] for name in ("cosyvoice_flow_streamed_chunks_total",
                                                        "cosyvoice_flow_stream_evictions_total")}
#: Seconds between a replica's exports of its counts: Ray's default (what the benchmark starts the
#: service with), and Ray's shortest (`--quick`).
DEFAULT_EXPORT_INTERVAL_S = 10.0
FAST_EXPORT_INTERVAL_S = 1.0
_SAMPLE = re.compile(r"^ray_(\w+)\{(.*)\} ([0-9.eE+-]+)$")
_TAG = re.compile(r'(\w+)="([^"]*)"')

Counts = dict[str, dict[str, float]]


def parse_counters(body: str) -> Counts:
    """The counters' values by tag value, summed over replicas, from a Prometheus text page."""
    counts: Counts = {name: {} for name in COUNTERS}
    for line in body.splitlines():
        if (sample := _SAMPLE.match(line)) is None or sample[1] not in COUNTERS:
            continue
        value = dict(_TAG.findall(sample[2])).get(COUNTERS[sample[1]], "")
        counts[sample[1]][value] = counts[sample[1]].get(value, 0.0) + float(sample[3])
    return counts


async def settled_counters(metrics_url: str, export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S) -> Counts:
    """The counters once two reads more than an export interval apart agree: Ray exports a
    replica's counts every `export_interval_s`, so a read just after a level may lack its last chunks."""
    import httpx

    interval_s = export_interval_s + 1.0
    deadline = time.monotonic() + 10 * interval_s
    async with httpx.AsyncClient(timeout=10) as client:
        previous = None
        while True:
            counts = parse_counters((await client.get(metrics_url)).text)
            if counts == previous or time.monotonic() > deadline:
                return counts
            previous = counts
            await asyncio.sleep(interval_s)


def difference(after: Counts, before: Counts) -> Counts:
    return {name: {value: count - before.get(name, {}).get(value, 0.0) for value, count in values.items()}
            for name, values in after.items()}


def flow_figures(counts: Counts) -> dict[str, Any]:
    """Streamed chunks by how the flow decoded them, and the full decodes and evictions among
    them per 100 chunks."""
    chunks = {kind: int(count) for kind, count in counts["cosyvoice_flow_streamed_chunks_total"].items() if count}
    evictions = {reason: int(count) for reason, count in counts["cosyvoice_flow_stream_evictions_total"].items()
                 if count}
    total = sum(chunks.values())

    def per_100(count: int) -> float | None:
        return round(100 * count / total, 1) if total else None

    return {"chunks": chunks, "evictions": evictions,
            "fallbacks_per_100_chunks": per_100(chunks.get("from_start", 0)),
            "full_final_per_100_chunks": per_100(chunks.get("final", 0)),
            "evictions_per_100_chunks": per_100(sum(evictions.values()))}
