"""Every documented metric is emitted on Ray's Prometheus endpoint after a synthesis."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import soundfile as sf

from tts_core.metrics import METRICS


def sample_wav() -> bytes:
    t = np.arange(48000) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_every_documented_metric_is_exported(serve_cluster) -> None:
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        created = client.post("/api/v1/voices/", data={"voice_id": "metrics_voice", "name": "Metrics",
                                                       "voice_type": "cross_lingual"},
                              files={"audio_file": ("a.wav", sample_wav(), "audio/wav")})
        assert created.status_code == 201
        assert client.post("/api/v1/synthesize/sft", json={"text": "Hello there, how are you?",
                                                           "voice_id": "pretrained_voice_001"}).status_code == 200
        assert client.post("/api/v1/synthesize/sft", json={"text": " ", "voice_id": "pretrained_voice_001"}
                           ).status_code == 400
        task = client.post("/api/v1/async/synthesize/sft", json={"text": "Hello again.",
                                                                 "voice_id": "pretrained_voice_001"})
        assert task.status_code == 202
        client.delete("/api/v1/voices/metrics_voice")

    # Ray exports a counter once it has counted something: stream states are evicted only when the
    # flow replica's budget runs short, which the session's never does (the benchmark's test of a
    # short budget reads that counter from the endpoint).
    wanted = {f"ray_{name}" for name in METRICS if name != "cosyvoice_flow_stream_evictions_total"}
    found: set[str] = set()
    body = ""
    deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
    while time.monotonic() < deadline:
        body = httpx.get(serve_cluster["metrics_url"], timeout=10).text
        found = {name for name in wanted if any(line.startswith(name) for line in body.splitlines())}
        if found == wanted and 'outcome="client_error"' in body:
            break
        time.sleep(2)
    assert found == wanted, f"missing: {sorted(wanted - found)}"
    assert 'outcome="success"' in body
    assert 'outcome="client_error"' in body
