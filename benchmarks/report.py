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
            pairs: list[tuple[RequestResult, RequestResult]], compare: list[LevelRun] | None = None) -> dict[str, Any]:
    """Per mode and concurrency: each side's figures, and the service's ratio to the baseline
    (`ratio`) and to the server at --compare-url (`compare_ratio`)."""
    baseline_by_level = {(run.mode, run.concurrency): run for run in baseline}
    compare_by_level = {(run.mode, run.concurrency): run for run in compare or []}
    results = []
    for run in service:
        entry: dict[str, Any] = {"mode": run.mode, "concurrency": run.concurrency, "service": summarize(run)}
        for side, ratio_key, by_level in (("baseline", "ratio", baseline_by_level),
                                          ("compare", "compare_ratio", compare_by_level)):
            if (reference := by_level.get((run.mode, run.concurrency))) is not None:
                entry[side] = summarize(reference)
                entry[ratio_key] = ratio(entry["service"], entry[side])
            else:
                entry[side], entry[ratio_key] = None, None
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
    """Per mode and concurrency: each side and the service's ratios to it, one line each; then
    start-up, memory and overhead."""
    header = (f"{'mode':<7}{'conc':>5}  {'side':<11}{'req':>5}{'err':>5}{'audio s':>9}{'audio-s/s':>11}{'ttfa p50':>10}"
              f"{'ttfa p95':>10}{'rtf':>8}{'rss MB':>9}{'cpu/aud':>9}{'cores':>7}")
    lines = [f"model {report['model']} ({report['dtype']}), {report.get('workload', 'sft')} workload, "
             f"{report.get('cpus')} CPUs, load average {report.get('load_avg')} (start, end)",
             header, "-" * len(header)]
    for entry in report["results"]:
        for side in ("service", "baseline", "compare"):
            figures = entry.get(side)
            if figures is None:
                continue
            lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  {side:<11}{figures['requests']:>5}"
                         f"{figures['errors']:>5}{_cell(figures['audio_s'], 2):>9}{_cell(figures['throughput'], 3):>11}"
                         f"{_cell(figures['ttfa_p50_ms']):>10}{_cell(figures['ttfa_p95_ms']):>10}"
                         f"{_cell(figures['rtf'], 3):>8}{_cell(figures['peak_rss_mb'], 0):>9}"
                         f"{_cell(figures['cpu_per_audio_s'], 2):>9}{_cell(figures['cores_busy'], 2):>7}")
        if (flow := entry["service"].get("flow")) is not None:
            lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  flow chunks {sum(flow['chunks'].values())} "
                         f"{flow['chunks']}: per 100, {_cell(flow['fallbacks_per_100_chunks'])} full-decode "
                         f"fallbacks, {_cell(flow['full_final_per_100_chunks'])} full final chunks, "
                         f"{_cell(flow['evictions_per_100_chunks'])} evictions {flow['evictions']}")
        if stages := entry["service"].get("stages_p50_ms"):
            what = "first audio" if entry["mode"] == "stream" else "whole request"
            lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  {what} by stage, p50 ms: "
                         + ", ".join(f"{stage} {_cell(ms)}" for stage, ms in stages.items()))
        for key, label in (("ratio", "ratio"), ("compare_ratio", "/ compare")):
            if (r := entry.get(key)) is not None:
                lines.append(f"{entry['mode']:<7}{entry['concurrency']:>5}  {label:<11}{'':>19}"
                             f"{_cell(r['throughput'], 2):>11}{_cell(r['ttfa_p50'], 2):>10}{'':>10}"
                             f"{_cell(r['rtf'], 2):>8}{_cell(r['peak_rss'], 2):>9}"
                             f"{_cell(r['cpu_per_audio_s'], 2):>9}")
    lines.append("ttfa in ms; whole mode: ttfa = full response time (upstream protocol: first PCM byte); "
                 "ratio = service / baseline, / compare = service / compared server; "
                 "rss: peak of the summed RSS (service: all its Ray processes); cpu/aud: CPU seconds per second "
                 "of audio, cores: CPU seconds per wall second, of the same processes")
    lines.extend(_startup_lines(report.get("startup") or {}))
    lines.extend(_memory_lines(report.get("memory") or {}))
    if (details := report.get("overhead")) is not None:
        lines.append(f"overhead per request (whole mode, one at a time, {details['requests']} requests): "
                     f"{details['overhead_ms']} ms (service p50 {details['service_latency_p50_ms']} ms, "
                     f"in-process p50 {details['inprocess_latency_p50_ms']} ms, same audio: {details['same_audio']}; "
                     f"target < {details['target_ms']:.0f} ms on the tiny twin)")
    return "\n".join(lines)


def _seconds(values: dict[str, float]) -> str:
    return ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {value:.1f} s" for name, value in values.items())


def _startup_lines(startup: dict[str, Any]) -> list[str]:
    lines = []
    for side in ("service", "baseline"):
        if (figures := startup.get(side)) is None:
            continue
        lines.append(f"start to ready, {side}: {figures['ready_s']:.1f} s ({_seconds(figures['phases'])}); "
                     f"warm-up request: {_seconds(figures['warmup_s'])}")
        for replica in figures.get("replicas", []):
            lines.append(f"  {replica['deployment']:<24} process start {replica['process_start_s']:5.1f} s, "
                         f"imports {replica['imports_s']:5.1f} s, constructor {replica['constructor_s']:5.1f} s, "
                         f"ready at {replica['ready_at_s']:5.1f} s")
    return lines


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    lines = []
    for side in ("service", "baseline", "compare"):
        if not (snapshots := memory.get(side)):
            continue
        for moment in ("ready", "after_run"):
            if (snapshot := snapshots.get(moment)) is None:
                continue
            parts = ", ".join(f"{label} {entry['pss_mb']:.0f}" + (f" (x{entry['processes']})"
                                                                   if entry["processes"] > 1 else "")
                              for label, entry in snapshot["by_process"].items())
            lines.append(f"PSS, {side}, {moment.replace('_', ' ')}: {snapshot['pss_mb']:.0f} MB over "
                         f"{snapshot['processes']} processes ({parts})")
    return lines
