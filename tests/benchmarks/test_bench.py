"""The benchmark commands: the report's arithmetic, the command line, chunk cost and the CI short mode end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.report import compose, format_table, overhead
from benchmarks.workload import SENTENCES, LevelRun, RequestResult, build_workload, percentile, summarize


def test_workload_is_fixed_and_seeded() -> None:
    requests = build_workload(20, seed=5)
    assert [request.seed for request in requests] == list(range(5, 25))
    assert requests[16].text == SENTENCES[0]
    assert build_workload(20, seed=5) == requests


@pytest.mark.parametrize("count", [1, 2, 5, 17])
def test_percentile_matches_numpy(count: int) -> None:
    values = list(np.random.default_rng(count).random(count))
    for q in (50, 95):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def level(mode: str, concurrency: int, latencies: list[float], audio: float = 2.0, wall: float = 4.0,
          failed: int = 0) -> LevelRun:
    results = [RequestResult(index=i, latency_s=latency, ttfa_s=latency / 2, audio_s=audio)
               for i, latency in enumerate(latencies)]
    results += [RequestResult(index=len(results) + i, latency_s=0.1, error="boom") for i in range(failed)]
    return LevelRun(mode=mode, concurrency=concurrency, wall_s=wall, results=results, peak_rss_bytes=2**30)


def test_summary_counts_only_successful_audio() -> None:
    figures = summarize(level("stream", 2, [1.0, 2.0, 3.0], failed=1))
    assert figures["requests"] == 4 and figures["errors"] == 1 and figures["first_error"] == "boom"
    assert figures["audio_s"] == 6.0 and figures["throughput"] == 1.5
    assert figures["ttfa_p50_ms"] == 1000.0 and figures["rtf"] == 1.0 and figures["peak_rss_mb"] == 1024.0


def test_report_pairs_sides_and_overhead() -> None:
    service = [level("whole", 1, [1.0, 1.0]), level("whole", 4, [2.0, 2.0], wall=2.0)]
    baseline = [level("whole", 1, [2.0, 2.0], wall=8.0)]
    pairs = [(RequestResult(i, 1.010 + i, audio_s=1.0), RequestResult(i, 1.0 + i, audio_s=1.0)) for i in range(3)]
    report = compose({"model": "m", "dtype": "fp32"}, service, baseline, pairs)
    first, second = report["results"]
    assert first["ratio"]["throughput"] == 2.0 and first["ratio"]["ttfa_p50"] == 0.5
    assert second["baseline"] is None and second["ratio"] is None
    assert report["overhead_ms"] == pytest.approx(10.0) and report["overhead"]["same_audio"] is True
    assert "overhead per request" in format_table(report)
    assert overhead([]) is None


def test_bench_commands_share_the_model_options() -> None:
    from benchmarks import chunks, soak
    from serve_app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench-soak", "--requests", "3", "--size", "real", "--dtype", "bf16",
                              "--torch-threads", "2"])
    assert (args.requests, args.warmup, args.size, args.dtype, args.torch_threads, args.seed) == (3, 50, "real",
                                                                                                   "bf16", 2, 0)
    assert args.handler is soak.run
    args = parser.parse_args(["bench-chunk-cost", "--chunks", "2"])
    assert args.chunks == 2 and args.model_dir is None and args.handler is chunks.run
    assert not hasattr(args, "voice")  # it sends no requests
    for bad in (["bench-soak", "--requests", "0"], ["bench", "--torch-threads", "-1"], ["bench", "--soak", "5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_first_byte_command_and_table() -> None:
    from benchmarks import first_byte
    from serve_app.cli import build_parser

    args = build_parser().parse_args(["bench-first-byte", "--url", "http://127.0.0.1:1", "--requests", "2"])
    assert (args.url, args.requests, args.handler) == ("http://127.0.0.1:1", 2, first_byte.run)
    cells = [first_byte.Cell("sft stream", "mp3", True, [0.3, 0.1, 0.2], [1.0, 1.2, 1.1]),
             first_byte.Cell("sft file", "wav", False, [0.9], [0.9])]
    assert first_byte.report(cells).splitlines()[2:] == ["| sft stream | mp3 | yes | 200 ms | 1100 ms |",
                                                         "| sft file | wav | no (file) | 900 ms | 900 ms |"]
    assert first_byte.request_body("openai (sse)", "opus", "v", 3)["stream_format"] == "sse"
    assert first_byte.request_body("sft file", "aac", "v", 3)["stream"] is False
    assert 0 < first_byte.encoder_cost_ms("mp3", seconds=2, repeats=1) < 1000


def test_each_bench_command_says_how_to_install_the_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app import cli

    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name="benchmarks")

    monkeypatch.setattr(cli, "importlib", SimpleNamespace(import_module=missing))
    for command in cli.BENCH_COMMANDS:
        with pytest.raises(SystemExit, match=rf"cosyvoice-serve {command}: .*pip install -e \./benchmarks"):
            cli.main([command])


def bench_command() -> list[str]:
    script = Path(sys.executable).with_name("cosyvoice-serve")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "serve_app.cli"]


def test_quick_bench_ends_with_its_json_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The CI short mode, as a subprocess: it starts a Ray instance of its own, never the session's."""
    output = tmp_path / "report.json"
    completed = subprocess.run([*bench_command(), "bench", "--quick", "--model-dir", str(tiny_model_dir),
                                "--output", str(output)], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["quick"] is True and report["voice_id"] == "pretrained_voice_001"
    assert {(entry["mode"], entry["concurrency"]) for entry in report["results"]} == {
        (mode, concurrency) for mode in ("stream", "whole") for concurrency in (1, 2)}
    for entry in report["results"]:
        assert entry["service"]["errors"] == 0
        for side in ("service", "baseline"):
            figures = entry[side]
            assert figures["throughput"] > 0 and figures["ttfa_p50_ms"] > 0 and figures["ttfa_p95_ms"] > 0
            assert figures["rtf"] > 0 and figures["peak_rss_mb"] > 0
        assert entry["ratio"]["throughput"] > 0
    assert isinstance(report["overhead_ms"], float)
    assert report["overhead"]["same_audio"] is True
    assert json.loads(output.read_text()) == report


def test_chunk_cost_ends_with_its_json_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run([*bench_command(), "bench-chunk-cost", "--model-dir", str(tiny_model_dir),
                                "--chunks", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [row["chunk"] for row in report["chunks"]] == [0, 1]
    # The incremental decoder must give the mel that recomputing from the start gives.
    assert all(row["max_abs_diff"] < 1e-3 for row in report["chunks"])
