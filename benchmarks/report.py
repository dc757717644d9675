"""The benchmark's report: one JSON object with every figure, and a table of it for people."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.workload import LevelRun, RequestResult, ratio, summarize

#: What HTTP + Ray may add per request (tiny twin, concurrency 1), shown next to the measured figure.
OVERHEAD_TARGET_MS = 15.0


def overhead(pairs: list[tuple[RequestResult, RequestResult]]) -> dict[str, Any] | None:
    """What HTTP and Ray add per request: the median over requests of service latency minus the
    in-process latency of the same request (same text and seed, hence the same audio)."""
    pairs = [(remote, local) for remote, local in pairs if remote.ok and local.ok]
    if not pairs:
        return None
    differences = [remote.latency_s - local.latency_s for remote, local in pairs]
    return {
        "requests": len(pairs),
        "overhead_ms": round(statistics.median(differences) * 1000.0, 1),
        "service_latency_p50_ms": round(statistics.median(remote.latency_s for remote, _ in pairs) * 1000.0, 1),
        "inprocess_latency_p50_ms": round(statistics.median(local.latency_s for _, local in pairs) * 1000.0, 1),
        # The same seed must give the same audio; if not, the two paths did not do the same work.
        "same_audio": all(abs(remote.audio_s - local.audio_s) < 0.002 for remote, local in pairs),
        "target_ms": OVERHEAD_TARGET_MS,
        "pairs_ms": [[round(remote.latency_s * 1000.0, 1), round(local.latency_s * 1000.0, 1)]
                     for remote, local in pairs],
    }


def compose(meta: dict[str, Any], service: list[LevelRun], baseline: list[LevelRun],
            pairs: list[tuple[RequestResult, RequestResult]]) -> dict[str, Any]:
    baseline_by_level = {(run.mode, run.concurrency): run for run in baseline}
    results = []
    for run in service:
        entry: dict[str, Any] = {"mode": run.mode, "concurrency": run.concurrency, "service": summarize(run)}
        if (reference := baseline_by_level.get((run.mode, run.concurrency))) is not None:
            entry["baseline"] = summarize(reference)
            entry["ratio"] = ratio(entry["service"], entry["baseline"])
        else:
            entry["baseline"], entry["ratio"] = None, None
        results.append(entry)
    details = overhead(pairs)
    return {**meta, "results": results, "overhead_ms": details["overhead_ms"] if details else None,
            "overhead": details}


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """Per mode and concurrency: service, baseline and their ratio, one line each."""
    header = (f"{'mode':<7}{'conc':>5}  {'side':<9}{'req':>5}{'err':>5}{'audio-s/s':>11}{'ttfa p50':>10}"
              f"{'ttfa p95':>10}{'rtf':>8}{'rss MB':>9}")
    lines = [f"model {report['model']} ({report['dtype']}), {report.get('cpus')} CPUs, "
             f"load average {report.get('load_avg')} (start, end)", header, "-" * len(header)]
    for entry in report["results"]:
        for side in ("service", "baseline"):
            figures = entry[side]
            if figures is None:
                continue
            lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  {side:<9}{figures['requests']:>5}"
                         f"{figures['errors']:>5}{_cell(figures['throughput'], 3):>11}"
                         f"{_cell(figures['ttfa_p50_ms']):>10}{_cell(figures['ttfa_p95_ms']):>10}"
                         f"{_cell(figures['rtf'], 3):>8}{_cell(figures['peak_rss_mb'], 0):>9}")
        if entry["ratio"] is not None:
            r = entry["ratio"]
            lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  {'ratio':<9}{'':>10}"
                         f"{_cell(r['throughput'], 2):>11}{_cell(r['ttfa_p50'], 2):>10}{'':>10}"
                         f"{_cell(r['rtf'], 2):>8}{_cell(r['peak_rss'], 2):>9}")
    lines.append("ttfa in ms; whole mode: ttfa = full response time; ratio = service / baseline; "
                 "rss: peak of the summed RSS (service: all its Ray processes)")
    if (pss := report.get("pss_mb")) is not None:
        lines.append(f"PSS after the run (shared pages counted once): service {_cell(pss['service'], 0)} MB, "
                     f"baseline {_cell(pss['baseline'], 0)} MB")
    if (details := report.get("overhead")) is not None:
        lines.append(f"overhead per request (whole mode, one at a time, {details['requests']} requests): "
                     f"{details['overhead_ms']} ms (service p50 {details['service_latency_p50_ms']} ms, "
                     f"in-process p50 {details['inprocess_latency_p50_ms']} ms, same audio: {details['same_audio']}; "
                     f"target < {details['target_ms']:.0f} ms on the tiny twin)")
    return "\n".join(lines)
