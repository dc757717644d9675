"""The benchmark commands: the report's arithmetic, the command line, chunk cost and the CI short mode end to end."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import numpy as np
import psutil
import pytest
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from benchmarks.memory import UsageSampler
from benchmarks.report import compose, format_table, overhead
from benchmarks.workload import SENTENCES, LevelRun, RequestResult, build_workload, percentile, summarize
from tts_core.audio import decode_audio


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
    return LevelRun(mode=mode, concurrency=concurrency, wall_s=wall, results=results, peak_rss_bytes=2**30,
                    cpu_s=12.0)


def test_summary_counts_only_successful_audio() -> None:
    figures = summarize(level("stream", 2, [1.0, 2.0, 3.0], failed=1))
    assert figures["requests"] == 4 and figures["errors"] == 1 and figures["first_error"] == "boom"
    assert figures["audio_s"] == 6.0 and figures["throughput"] == 1.5
    assert figures["ttfa_p50_ms"] == 1000.0 and figures["rtf"] == 1.0 and figures["peak_rss_mb"] == 1024.0
    assert figures["cpu_per_audio_s"] == 2.0 and figures["cores_busy"] == 3.0


def test_report_pairs_sides_and_overhead() -> None:
    service = [level("whole", 1, [1.0, 1.0]), level("whole", 4, [2.0, 2.0], wall=2.0)]
    baseline = [level("whole", 1, [2.0, 2.0], wall=8.0)]
    pairs = [(RequestResult(i, 1.010 + i, audio_s=1.0), RequestResult(i, 1.0 + i, audio_s=1.0)) for i in range(3)]
    report = compose({"model": "m", "dtype": "fp32"}, service, baseline, pairs)
    first, second = report["results"]
    assert first["ratio"]["throughput"] == 2.0 and first["ratio"]["ttfa_p50"] == 0.5
    assert first["ratio"]["cpu_per_audio_s"] == 1.0
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


def test_first_audio_command_and_replies() -> None:
    from benchmarks import first_audio
    from serve_app.cli import build_parser

    args = build_parser().parse_args(["bench-first-audio", "--url", "http://127.0.0.1:1", "--sentences", "3",
                                      "--tokens-per-second", "10"])
    assert (args.url, args.sentences, args.tokens_per_second, args.repeat, args.handler) == (
        "http://127.0.0.1:1", 3, 10.0, 2, first_audio.run)
    replies = first_audio.replies(3)
    texts = first_audio.TEXTS
    assert len(replies) == len(texts) and replies[0] == " ".join(texts[:3])
    assert replies[-1] == " ".join([texts[-1], texts[0], texts[1]])
    pieces = first_audio.llm_pieces(texts[0])
    assert "".join(pieces) == texts[0] and len(pieces) == len(texts[0].split())
    assert first_audio.summary([0.1, 0.3, 0.2]) == {"p50": 0.2, "p95": 0.29}


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
            assert figures["cpu_per_audio_s"] > 0 and 0 < figures["cores_busy"] <= os.cpu_count() * 1.1
        assert entry["ratio"]["throughput"] > 0
    assert isinstance(report["overhead_ms"], float)
    assert report["overhead"]["same_audio"] is True
    # How the flow decoded each stream level's chunks: one replica with room for every stream, so no
    # stream fell back to a full decode; every stream's last chunk is one, as upstream's is.
    for entry in report["results"]:
        flow = entry["service"]["flow"]
        if entry["mode"] == "whole":
            assert flow is None
            continue
        assert flow["chunks"]["final"] == entry["service"]["requests"] and flow["chunks"]["first"] > 0
        assert flow["fallbacks_per_100_chunks"] == flow["evictions_per_100_chunks"] == 0.0
        assert flow["full_final_per_100_chunks"] > 0
    # Start to ready, by phase and by replica, and PSS per process, for both sides.
    service = report["startup"]["service"]
    assert service["ready_s"] > 0 and set(service["phases"]) == {"ray_init_s", "serve_start_s", "serve_run_s"}
    replicas = {replica["deployment"]: replica for replica in service["replicas"]}
    assert {"TextFrontendDeployment", "SpeechTokenLLM", "FlowDecoder", "Vocoder", "ApiIngress"} <= set(replicas)
    assert all(0 < replica["ready_at_s"] <= service["ready_s"] for replica in replicas.values())
    assert report["startup"]["baseline"]["ready_s"] > 0
    after = report["memory"]["service"]["after_run"]
    assert after["pss_mb"] == report["pss_mb"]["service"] > 0
    assert after["by_process"]["ray::ServeReplica:cosyvoice:FlowDecoder"]["pss_mb"] > 0
    assert report["memory"]["baseline"]["ready"]["processes"] == 1
    assert json.loads(output.read_text()) == report


def test_stream_evictions_and_fallbacks_counted_when_the_budget_is_short(tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    """A stream-state budget smaller than one stream's state: every later chunk is a full decode,
    every kept state too large, and the benchmark says so per 100 chunks; the final chunk decoded
    incrementally is no full-attention one."""
    completed = subprocess.run([*bench_command(), "bench", "--quick", "--model-dir", str(tiny_model_dir),
                                "--modes", "stream", "--concurrency", "2", "--requests", "2", "--no-baseline",
                                "--flow-stream-cache-mb", "0.5", "--flow-stream-final-chunk", "incremental"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["service_settings"] == {"flow_stream_cache_mb": 0.5, "flow_stream_final_chunk": "incremental"}
    [entry] = report["results"]
    flow = entry["service"]["flow"]
    assert entry["service"]["errors"] == 0 and "final" not in flow["chunks"]
    later = flow["chunks"]["from_start"]
    assert flow["chunks"]["first"] == 2 and later > 0 and "cached" not in flow["chunks"]
    # Each stream's state after each chunk but its last is too large to keep.
    assert flow["evictions"] == {"too_large": sum(flow["chunks"].values()) - 2}
    assert flow["fallbacks_per_100_chunks"] == round(100 * later / sum(flow["chunks"].values()), 1)
    assert "full-decode fallbacks" in completed.stdout


def test_flow_counters_from_a_prometheus_page() -> None:
    from benchmarks.flow_metrics import difference, flow_figures, parse_counters

    page = "\n".join([
        "# HELP ray_cosyvoice_flow_streamed_chunks_total Streamed flow chunks",
        'ray_cosyvoice_flow_streamed_chunks_total{Component="a",decode="first",replica="r1"} 2.0',
        'ray_cosyvoice_flow_streamed_chunks_total{Component="a",decode="first",replica="r2"} 2.0',
        'ray_cosyvoice_flow_streamed_chunks_total{Component="a",decode="cached",replica="r1"} 10.0',
        'ray_cosyvoice_flow_streamed_chunks_total{Component="a",decode="from_start",replica="r1"} 3.0',
        'ray_cosyvoice_flow_streamed_chunks_total{Component="a",decode="final",replica="r1"} 5.0',
        'ray_cosyvoice_flow_stream_evictions_total{Component="a",reason="room",replica="r2"} 3.0',
        'ray_cosyvoice_requests_total{mode="sft",outcome="success"} 9.0'])
    before = parse_counters(page.replace("10.0", "0.0"))
    counts = difference(parse_counters(page), before)
    assert counts["cosyvoice_flow_streamed_chunks_total"]["cached"] == 10.0
    figures = flow_figures(counts)
    assert figures["chunks"] == {"cached": 10} and figures["fallbacks_per_100_chunks"] == 0.0
    figures = flow_figures(parse_counters(page))
    assert figures["chunks"] == {"first": 4, "cached": 10, "from_start": 3, "final": 5}
    assert figures["evictions"] == {"room": 3}
    assert (figures["fallbacks_per_100_chunks"], figures["full_final_per_100_chunks"],
            figures["evictions_per_100_chunks"]) == (13.6, 22.7, 13.6)
    assert flow_figures(parse_counters(""))["fallbacks_per_100_chunks"] is None


def test_chunk_cost_ends_with_its_json_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    completed = subprocess.run([*bench_command(), "bench-chunk-cost", "--model-dir", str(tiny_model_dir),
                                "--chunks", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [row["chunk"] for row in report["chunks"]] == [0, 1]
    # The incremental decoder must give the mel that recomputing from the start gives, from the
    # voice's shared prompt state too (the tiny twin's voices: 75 prompt tokens, 2 whole chunks).
    assert all(row["max_abs_diff"] < 1e-3 and row["shared_prompt_max_abs_diff"] < 1e-3 for row in report["chunks"])
    assert report["shared_prompt"]["frames"] == 100 and report["cache_bytes_per_frame"] > 0
    assert all(row["shared_prompt_cache_mb"] < row["cache_mb"] for row in report["chunks"])
    # The last chunk both ways: the same audio length, close but not equal audio.
    final = report["final_chunk"]
    assert final["audio_samples"][0] == final["audio_samples"][1] and final["audio_max_abs_diff"] > 0


def test_replica_startup_from_serve_logs(tmp_path: Path) -> None:
    from benchmarks.startup import log_time, replica_startup

    (tmp_path / "controller_11.log").write_text(
        "INFO 2030-01-02 03:04:00,000 controller 11 -- Starting Replica(id='abc', deployment='FlowDecoder', "
        "app='cosyvoice').\n"
        "INFO 2030-01-02 03:04:30,500 controller 11 -- Replica(id='abc', deployment='FlowDecoder', app='cosyvoice') "
        "started successfully on node 'n1' after 30.5s (PID: 4242). Replica constructor, reconfigure method, and "
        "initial health check took 20.0s.\n"
        "INFO 2030-01-02 03:04:31,000 controller 11 -- Starting Replica(id='late', deployment='Vocoder', "
        "app='cosyvoice').\n")
    (tmp_path / "replica_cosyvoice_FlowDecoder_abc.log").write_text(
        "INFO 2030-01-02 03:04:10,250 cosyvoice_FlowDecoder abc -- Started initializing replica.\n")
    started_at = log_time("2030-01-02 03:03:50,000")
    [row] = replica_startup(tmp_path, started_at, {4242: log_time("2030-01-02 03:04:02,000")})
    assert row == {"deployment": "FlowDecoder", "replica": "abc", "pid": 4242, "process_start_s": 2.0,
                   "imports_s": 8.25, "constructor_s": 20.0, "ready_at_s": 40.5}
    # A worker process Ray had started before it was asked for costs no process start.
    [row] = replica_startup(tmp_path, started_at, {})
    assert row["process_start_s"] == 0.0 and row["imports_s"] == 10.25
    assert replica_startup(tmp_path / "missing", started_at, {}) == []


def test_usage_sampler_counts_cpu_of_processes_started_during_the_level() -> None:
    """A process that spins for a second while the level runs, started after it began, counts in
    full, though it has ended by the time the level does."""
    spinner = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\ntime.sleep(0.6)"

    def spinners() -> list[psutil.Process]:
        found = []
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if spinner in child.cmdline():
                    found.append(child)
        return found

    with UsageSampler(spinners, refresh_s=0.2) as usage:
        subprocess.run([sys.executable, "-c", spinner], check=True)
    assert 0.9 <= usage.cpu_seconds <= 1.5


def test_pss_snapshot_labels_each_process() -> None:
    from benchmarks.memory import own_process, pss_snapshot

    snapshot = pss_snapshot(own_process())
    assert snapshot["processes"] == 1 and snapshot["pss_mb"] > 0
    [(label, entry)] = snapshot["by_process"].items()
    assert label.startswith("python") and entry == {"processes": 1, "pss_mb": snapshot["pss_mb"]}


def test_workload_and_compare_options_parse() -> None:
    from serve_app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "--workload", "zero-shot", "--compare-url", "http://127.0.0.1:50000",
                              "--compare-protocol", "upstream", "--compare-pid", "7"])
    assert (args.workload, args.compare_protocol, args.compare_sample_rate, args.compare_pid) == (
        "zero-shot", "upstream", 24000, 7)
    assert parser.parse_args(["bench"]).workload == "sft"
    for bad in (["bench", "--workload", "instruct"], ["bench", "--compare-protocol", "grpc"],
                ["bench", "--compare-sample-rate", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def fake_upstream_server(failures: int = 0) -> FastAPI:
    """Upstream's FastAPI server's two routes, as its code defines them: form fields (and the prompt
    file) in, raw 16-bit PCM out; here one second of silence at 24 kHz in two pieces. Its first
    `failures` requests fail with a 500, as upstream's does when its LLM stops too soon; the
    requests it got are counted in `app.state.requests`."""
    app = FastAPI()
    app.state.requests = 0
    pcm = bytes(2 * 24000)

    def answer() -> Response:
        app.state.requests += 1
        if app.state.requests <= failures:
            return PlainTextResponse("", 500)
        return StreamingResponse(iter([pcm[:16000], pcm[16000:]]))

    @app.post("/inference_sft")
    async def inference_sft(tts_text: Annotated[str, Form()], spk_id: Annotated[str, Form()]):
        return answer() if spk_id == "pretrained_voice_001" and tts_text else PlainTextResponse("", 400)

    @app.post("/inference_zero_shot")
    async def inference_zero_shot(tts_text: Annotated[str, Form()], prompt_text: Annotated[str, Form()],
                                  prompt_wav: Annotated[UploadFile, File()]):
        prompt = decode_audio(await prompt_wav.read())
        if (prompt.sample_rate, round(prompt.duration, 2), bool(prompt_text)) != (16000, 3.0, True):
            return PlainTextResponse("unexpected prompt", 400)
        return answer()

    return app


def drive_on_loopback(app: FastAPI, bench_arguments: list[str], **drive_options: Any) -> Any:
    """`drive` with the upstream protocol against `app`, served on loopback for the run."""
    import asyncio
    import threading

    import uvicorn

    from benchmarks.clients import UpstreamProtocol
    from benchmarks.runner import add_arguments, drive, resolve_options
    from serve_app.local import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        options = resolve_options(parser.parse_args(bench_arguments))
        return asyncio.run(drive(f"http://127.0.0.1:{port}", UpstreamProtocol(24000), options, label="upstream",
                                 **drive_options))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("workload", ["sft", "zero-shot"])
def test_compare_url_drives_an_upstream_server(workload: str, tmp_path: Path) -> None:
    """The upstream protocol end to end against a stand-in of upstream's server on loopback: its
    levels run in whole mode only, and a server on this machine given by PID gets its memory read."""
    from benchmarks.memory import process_tree

    run = drive_on_loopback(fake_upstream_server(), ["--model-dir", str(tmp_path), "--workload", workload,
                                                     "--concurrency", "1,2", "--requests", "2"],
                            processes=process_tree(os.getpid()))
    assert [(level.mode, level.concurrency) for level in run.runs] == [("whole", 1), ("whole", 2)]
    assert set(run.warmup_s) == {"whole"}
    for level in run.runs:
        for result in level.results:
            assert result.ok, result.error
            assert result.audio_s == pytest.approx(1.0) and 0 < result.ttfa_s <= result.latency_s
    assert run.memory["ready"]["pss_mb"] > 0 and run.memory["after_run"]["processes"] >= 1


def test_a_compared_server_failing_its_warm_up_is_measured_still(tmp_path: Path) -> None:
    """Upstream's server on a random-weight twin can fail a request (its unseeded sampling may stop
    after a token or two, too short for the flow's convolutions): a compared server's failed
    warm-up is logged, not the end of a run whose service and baseline figures took many minutes."""
    app = fake_upstream_server(failures=1)
    run = drive_on_loopback(app, ["--model-dir", str(tmp_path), "--concurrency", "1", "--requests", "2"],
                            must_warm_up=False)
    assert app.state.requests == 3  # the warm-up, then the level's two requests
    [level] = run.runs
    assert [result.ok for result in level.results] == [True, True]


def test_zero_shot_bench_against_running_servers(serve_cluster: dict, tiny_model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The zero-shot workload through a running service (--url), the same service as --compare-url,
    and the baseline, which extracts the uploaded prompt's features per request as upstream does."""
    from serve_app.cli import main

    url = serve_cluster["base_url"]
    assert main(["bench", "--url", url, "--compare-url", url, "--model-dir", str(tiny_model_dir), "--workload",
                 "zero-shot", "--concurrency", "1", "--requests", "1", "--metrics-url",
                 serve_cluster["metrics_url"]]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["workload"] == "zero-shot" and report["voice_id"] is None
    assert report["compare"]["protocol"] == "cosyvoice-serve"
    assert {entry["mode"] for entry in report["results"]} == {"stream", "whole"}
    for entry in report["results"]:
        for side in ("service", "baseline", "compare"):
            assert entry[side]["errors"] == 0 and entry[side]["throughput"] > 0, (side, entry[side])
        assert entry["ratio"]["throughput"] > 0 and entry["compare_ratio"]["throughput"] > 0
        # The service's counters, read from the endpoint given: one streamed request, one final chunk.
        if entry["mode"] == "stream":
            assert entry["service"]["flow"]["chunks"]["final"] == 1
        # Where the time went, stage by stage, from the service's Server-Timing; the baseline has none.
        stages = entry["service"]["stages_p50_ms"]
        first_tokens = "llm_first" if entry["mode"] == "stream" else "llm"
        assert {"text", "prompt", first_tokens, "flow", "vocoder"} <= set(stages), stages
        assert sum(stages.values()) <= entry["service"]["ttfa_p50_ms"], entry["service"]
        assert entry["baseline"]["stages_p50_ms"] is None
    # The in-process path decodes the prompt and extracts its features as the service does: same audio.
    assert report["overhead"]["same_audio"] is True
    baseline = report["startup"]["baseline"]
    assert baseline["ready_s"] > 0 and set(baseline["phases"]) == {"process_start_s", "imports_s", "model_load_s"}
    assert set(baseline["warmup_s"]) == {"stream", "whole"}
    assert report["memory"]["baseline"]["after_run"]["pss_mb"] > 0 and report["pss_mb"]["baseline"] > 0
    # A service given by URL has neither start-up nor memory figures here.
    assert report["startup"]["service"] is None and report["memory"]["service"] is None
