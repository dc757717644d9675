"""Replica deaths under load: while streamed and whole requests keep coming, the LLM, flow and vocoder
replicas are killed (SIGKILL) in turn. A client sees a delay, not a failure: every request answers
200 with the audio the same seed gives on a quiet service. Prints failures and recovery per kill."""

from __future__ import annotations

import io
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from tests.serve_app.http_helpers import download

# Opt-in (`make test-slow`): it kills each model stage's replica under load and needs a quiet machine.
pytestmark = [pytest.mark.kills_replicas, pytest.mark.slow]

TEXT = "Hello there, this is a test of a service that keeps going. It has a second sentence too."
SEEDS = (101, 102, 103)
STAGES = ("SpeechTokenLLM", "FlowDecoder", "Vocoder")
#: How long one kill may take to heal before the test gives up on it.
RECOVERY_LIMIT_S = 120.0
#: Audio equal up to float noise of batched vs lone computation, after 16-bit rounding.
PCM_TOLERANCE = 4 / 32768


@dataclass
class Outcome:
    kind: str
    seed: int
    started: float
    ended: float
    samples: np.ndarray | None = None
    error: str | None = None


@dataclass
class Load:
    """Two clients, one streaming and one asking for whole files, each sending one request after another."""

    base_url: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, kind: str) -> None:
        with httpx.Client(base_url=self.base_url, timeout=RECOVERY_LIMIT_S + 60) as client:
            index = 0
            while not self.stop.is_set():
                seed = SEEDS[index % len(SEEDS)]
                index += 1
                started = time.monotonic()
                try:
                    samples, error = synthesize(client, kind, seed), None
                except Exception as exc:  # what the client sees: an error status, a cut stream
                    samples, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
                self.outcomes.append(Outcome(kind, seed, started, time.monotonic(), samples, error))


def synthesize(client: httpx.Client, kind: str, seed: int) -> np.ndarray:
    body = {"voice_id": "pretrained_voice_001", "text": TEXT, "seed": seed, "stream": kind == "stream"}
    if kind == "stream":
        with client.stream("POST", "/api/v1/synthesize/sft", json=body) as response:
            data = response.read()
        if response.status_code != 200:
            raise AssertionError(f"status {response.status_code}: {data[:200]!r}")
        return np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768
    response = client.post("/api/v1/synthesize/sft", json=body)
    if response.status_code != 200:
        raise AssertionError(f"status {response.status_code}: {response.text[:200]}")
    samples, _ = sf.read(io.BytesIO(download(client, response.json())), dtype="float32")
    return samples


def replica_process(app_name: str, deployment: str) -> psutil.Process:
    """The stage's replica in this session's cluster (a child of this test process)."""
    title = f"ray::ServeReplica:{app_name}:{deployment}"
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(title):
                found.append(process)
        except psutil.Error:
            continue
    assert len(found) == 1, (title, found)
    return found[0]


def healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/health", timeout=10).json().get("status") == "healthy"
    except (httpx.HTTPError, ValueError):
        return False


def test_replica_deaths_cost_a_delay_not_a_failure(serve_cluster) -> None:
    base_url, app_name = serve_cluster["base_url"], serve_cluster["app_name"]
    with httpx.Client(base_url=base_url, timeout=120) as client:
        quiet = {(kind, seed): synthesize(client, kind, seed) for kind in ("stream", "whole") for seed in SEEDS}
    load = Load(base_url)
    clients = [threading.Thread(target=load.run, args=(kind,), daemon=True) for kind in ("stream", "whole")]
    for thread in clients:
        thread.start()
    kills: list[tuple[str, float, float | None]] = []
    with httpx.Client(base_url=base_url) as client:
        try:
            for stage in STAGES:
                time.sleep(2.0)  # requests in flight at the kill
                process = replica_process(app_name, stage)
                killed = time.monotonic()
                process.send_signal(signal.SIGKILL)
                time.sleep(1.0)
                while not healthy(client) and time.monotonic() - killed < RECOVERY_LIMIT_S:
                    time.sleep(0.5)
                kills.append((stage, killed, time.monotonic() - killed if healthy(client) else None))
        finally:
            time.sleep(2.0)
            load.stop.set()
            for thread in clients:
                thread.join(timeout=RECOVERY_LIMIT_S + 60)

    def matches_quiet_run(outcome: Outcome) -> bool:
        expected = quiet[(outcome.kind, outcome.seed)]
        return outcome.samples.shape == expected.shape and np.max(np.abs(outcome.samples - expected)) <= PCM_TOLERANCE

    failed = [outcome for outcome in load.outcomes if outcome.error is not None]
    mismatched = [outcome for outcome in load.outcomes if outcome.error is None and not matches_quiet_run(outcome)]
    visible = {id(outcome) for outcome in failed + mismatched}
    for stage, killed, recovery in kills:
        outage_end = killed + (RECOVERY_LIMIT_S if recovery is None else recovery)
        hit = [outcome for outcome in load.outcomes if outcome.started < outage_end and outcome.ended > killed]
        in_flight = sum(outcome.started < killed for outcome in hit)
        print(f"kill {stage}: healthy again after {recovery if recovery is None else round(recovery, 1)} s; "
              f"{len(hit)} requests overlapped the outage ({in_flight} in flight at the kill), "
              f"{sum(id(outcome) in visible for outcome in hit)} failed or differed from the quiet run")
    print(f"{len(load.outcomes)} requests in all, {len(failed)} failed, {len(mismatched)} with other audio")
    assert all(recovery is not None for _, _, recovery in kills), kills
    assert not failed, [(outcome.kind, outcome.error) for outcome in failed]
    assert not mismatched, [(outcome.kind, outcome.seed) for outcome in mismatched]
    in_flight_at_kills = sum(outcome.started < killed < outcome.ended for _, killed, _ in kills
                             for outcome in load.outcomes)
    assert in_flight_at_kills >= len(STAGES)  # the kills did hit requests in flight
