"""Asynchronous tasks over HTTP: lifecycle, progress, cancellation, durability, admission."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import soundfile as sf
from ray import serve

from deployments.task_manager import task_manager_by_name

SHORT = "Hello, how are you today?"
LONG = " ".join(["This sentence is one of many that together make a long text for the model to read aloud."] * 10)
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def client(serve_cluster):
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        yield client


def wav_bytes(seconds: float = 3.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 160 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def submit(client: httpx.Client, mode: str, text: str = SHORT, **fields) -> httpx.Response:
    if mode in ("sft", "instruct"):
        body = {"text": text, "voice_id": "pretrained_voice_001", **fields}
        if mode == "instruct":
            body.setdefault("instruct_text", "Please speak in a happy and energetic tone")
        return client.post(f"/api/v1/async/synthesize/{mode}", json=body)
    files = {"prompt_audio": ("voice.wav", wav_bytes(), "audio/wav")}
    data = {"text": text, "prompt_text": "Hello, this is a sample of my voice.", **fields}
    return client.post(f"/api/v1/async/synthesize/{mode}", data=data, files=files)


def wait_for(client: httpx.Client, task_id: str, states=TERMINAL, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/v1/async/tasks/{task_id}/status")
        if status.status_code == 200 and status.json()["status"] in states:
            return status.json()
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not reach {states}")


def llm_stats(serve_cluster) -> dict:
    return serve.get_deployment_handle("SpeechTokenLLM", app_name=serve_cluster["app_name"]).stats.remote().result()


@pytest.mark.parametrize("mode", ["sft", "zero-shot", "cross-lingual", "instruct"])
def test_submit_poll_fetch_download(client, mode) -> None:
    response = submit(client, mode, format="flac")
    assert response.status_code == 202
    submitted = response.json()
    task_id = submitted["task_id"]
    label = {"sft": "SFT", "zero-shot": "Zero-shot", "cross-lingual": "Cross-lingual", "instruct": "Instruct"}[mode]
    assert submitted == {"task_id": task_id, "status": "submitted",
                         "message": f"{label} synthesis task submitted successfully",
                         "check_status_url": f"/api/v1/async/tasks/{task_id}/status",
                         "result_url": f"/api/v1/async/tasks/{task_id}/result"}
    assert task_id.startswith("task_") and len(task_id) == 17

    final = wait_for(client, task_id)
    assert final["status"] == "completed" and final["progress"] == 1.0
    assert final["mode"] == mode.replace("-", "_") and final["error"] is None
    assert final["result_available"] and final["result_url"] == submitted["result_url"]
    assert final["created_at"] <= final["started_at"] <= final["completed_at"]

    result = client.get(submitted["result_url"])
    assert result.status_code == 200
    body = result.json()
    assert body["task_id"] == task_id and body["success"] and body["format"] == "flac"
    audio = client.get(body["audio_url"])
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/flac"
    samples, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 24000 and abs(len(samples) / rate - body["duration"]) < 0.01


def test_submission_is_validated_before_acceptance(client) -> None:
    before = client.get("/api/v1/async/tasks").json()["total"]
    assert submit(client, "sft", text="   ").status_code == 400
    missing = client.post("/api/v1/async/synthesize/sft", json={"text": SHORT, "voice_id": "nobody"})
    assert missing.status_code == 404 and missing.json()["error"] == "voice_not_found"
    assert client.post("/api/v1/async/synthesize/sft", json={"text": SHORT}).status_code == 422
    both = client.post("/api/v1/async/synthesize/cross-lingual", data={"text": SHORT})
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    assert client.get("/api/v1/async/tasks").json()["total"] == before


def test_progress_rises_and_reaches_one_only_when_completed(client) -> None:
    task_id = submit(client, "sft", text=LONG).json()["task_id"]
    seen = []
    while True:
        status = client.get(f"/api/v1/async/tasks/{task_id}/status").json()
        seen.append((status["status"], status["progress"]))
        if status["status"] in TERMINAL:
            break
        time.sleep(0.02)
    progress = [value for _, value in seen]
    assert progress == sorted(progress)
    assert all((value == 1.0) == (state == "completed") for state, value in seen)
    assert seen[-1] == ("completed", 1.0)
    assert len({value for state, value in seen if state == "processing"}) >= 3, seen


def test_result_of_unfinished_task_is_202_with_the_task(client) -> None:
    task_id = submit(client, "sft", text=LONG).json()["task_id"]
    pending = client.get(f"/api/v1/async/tasks/{task_id}/result")
    assert pending.status_code == 202
    assert pending.json()["task_id"] == task_id and pending.json()["status"] in ("pending", "processing")
    wait_for(client, task_id)


def test_cancel_stops_the_work(client, serve_cluster) -> None:
    audio_dir = Path(serve_cluster["settings"]["output_store_uri"])
    files_before = set(audio_dir.iterdir())
    task_id = submit(client, "sft", text=LONG).json()["task_id"]
    wait_for(client, task_id, states={"processing"})
    deadline = time.monotonic() + 30
    while llm_stats(serve_cluster)["active_sequences"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)

    cancelled = client.delete(f"/api/v1/async/tasks/{task_id}")
    assert cancelled.status_code == 200
    assert cancelled.json() == {"task_id": task_id, "status": "cancelled", "message": cancelled.json()["message"]}
    time.sleep(1.0)
    stats = llm_stats(serve_cluster)
    assert stats["active_sequences"] == 0
    time.sleep(1.0)
    assert llm_stats(serve_cluster)["tokens_generated"] == stats["tokens_generated"]

    status = client.get(f"/api/v1/async/tasks/{task_id}/status").json()
    assert status["status"] == "cancelled" and status["error"] and status["progress"] < 1.0
    result = client.get(f"/api/v1/async/tasks/{task_id}/result")
    assert result.status_code == 409
    assert result.json()["error"] == "task_cancelled" and result.json()["details"]["task_status"] == "cancelled"
    again = client.delete(f"/api/v1/async/tasks/{task_id}")
    assert again.status_code == 409 and again.json()["error"] == "task_not_cancellable"
    assert set(audio_dir.iterdir()) == files_before  # no result file was written


def test_unknown_task_is_404_everywhere(client) -> None:
    for method, path in [("GET", "/api/v1/async/tasks/task_000000000000/status"),
                         ("GET", "/api/v1/async/tasks/task_000000000000/result"),
                         ("DELETE", "/api/v1/async/tasks/task_000000000000")]:
        response = client.request(method, path)
        assert response.status_code == 404
        body = response.json()
        assert body["details"].pop("request_id") == response.headers["x-request-id"]
        assert body == {"error": "task_not_found", "message": "Task with ID 'task_000000000000' not found",
                        "details": {"path": path}}


def test_list_filters_newest_first_and_limits(client) -> None:
    ids = [submit(client, "sft").json()["task_id"] for _ in range(3)]
    for task_id in ids:
        wait_for(client, task_id)
    listing = client.get("/api/v1/async/tasks", params={"status": "completed", "limit": 2}).json()
    assert listing["total"] >= 3 and len(listing["tasks"]) == 2
    assert [task["task_id"] for task in listing["tasks"]] == ids[::-1][:2]
    assert all(task["status"] == "completed" for task in listing["tasks"])
    everything = client.get("/api/v1/async/tasks/").json()
    created = [task["created_at"] for task in everything["tasks"]]
    assert created == sorted(created, reverse=True)
    assert client.get("/api/v1/async/tasks", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/async/tasks", params={"status": "submitted"}).status_code == 422


def test_full_queue_answers_503_and_loses_nothing(client, serve_cluster) -> None:
    accepted, refused = [], None
    for _ in range(12):
        response = submit(client, "sft", text=LONG)
        if response.status_code == 503:
            refused = response
            break
        assert response.status_code == 202
        accepted.append(response.json()["task_id"])
    assert refused is not None, "the queue never filled"
    assert refused.json()["error"] == "queue_full" and int(refused.headers["Retry-After"]) >= 1
    assert len(accepted) >= serve_cluster["settings"]["max_queued_tasks"]
    for task_id in accepted:
        assert wait_for(client, task_id, timeout=300)["status"] == "completed"


def test_task_survives_the_ingress_replica(client) -> None:
    task_id = submit(client, "sft", text=LONG).json()["task_id"]
    wait_for(client, task_id, states={"processing"})
    [ingress] = [name for name in replica_names() if "#ApiIngress#" in name]
    ray.kill(ray.get_actor(ingress, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the controller starts a replacement replica
        try:
            if client.get("/").status_code == 200 and ingress not in replica_names():
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    final = wait_for(client, task_id, timeout=180)
    assert final["status"] == "completed"
    result = client.get(f"/api/v1/async/tasks/{task_id}/result")
    assert result.status_code == 200 and client.get(result.json()["audio_url"]).status_code == 200


def test_task_manager_restart_keeps_finished_and_fails_in_flight(client, serve_cluster) -> None:
    done = submit(client, "sft").json()["task_id"]
    wait_for(client, done)
    in_flight = submit(client, "sft", text=LONG).json()["task_id"]
    wait_for(client, in_flight, states={"processing"})

    ray.kill(task_manager_by_name(serve_cluster["app_name"]), no_restart=False)  # Ray restarts it

    final = wait_for(client, in_flight, timeout=60)
    assert final["status"] == "failed" and "restarted" in final["error"]
    failed = client.get(f"/api/v1/async/tasks/{in_flight}/result")
    assert failed.status_code == 409 and failed.json()["error"] == "task_failed"
    assert failed.json()["details"]["task_status"] == "failed"
    result = client.get(f"/api/v1/async/tasks/{done}/result")
    assert result.status_code == 200 and client.get(result.json()["audio_url"]).status_code == 200
    # The restarted manager takes new work.
    assert wait_for(client, submit(client, "sft").json()["task_id"])["status"] == "completed"


def replica_names() -> list[str]:
    from ray._private import state

    return [actor["Name"] for actor in state.actors().values()
            if actor["State"] == "ALIVE" and (actor.get("Name") or "").startswith("SERVE_REPLICA::")]
