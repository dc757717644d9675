"""What an attacker or an unlucky operator tries: text the normaliser chokes on, text with nothing to
speak on every route kind, wrong types, silent prompts, a store or task manager that restarts, and
every error body checked for tracebacks, paths, ips and escape codes."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import psutil
import pytest
import soundfile as sf

from tests.leaks import assert_no_leaks, assert_one_sentence
from tests.serve_app.http_helpers import PROMPT_TEXT, assert_error, assert_synthesis_result, register, unique_id

VOICE = "pretrained_voice_001"
UNSPEAKABLE = ["...!!!???,,,", "😀😀😀🎉"]


def silent_wav(seconds: float = 2.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 16000), np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def assert_clean_error(response: httpx.Response, status: int, code: str | None = None, echoed: str = "") -> dict:
    """The error shape, a one-sentence message, a request id, and nothing from inside the server
    (`echoed`: what the client sent, which may come back)."""
    body = assert_error(response, status, code)
    assert_one_sentence(body["message"], echoed)
    assert body["details"]["request_id"], body
    assert_no_leaks(body, echoed)
    return body


@pytest.mark.parametrize("text", ["see [1] here", "Price [5kg]", "[31", "Hello\u001b[31m world"])
def test_text_that_crashed_the_normaliser_is_spoken(client, text) -> None:
    response = client.post("/api/v1/synthesize/sft", json={"voice_id": VOICE, "text": text, "seed": 1})
    assert response.status_code == 200, response.text
    assert_synthesis_result(response.json())


@pytest.mark.parametrize("text", UNSPEAKABLE)
def test_text_with_nothing_to_speak_is_a_clean_400_on_every_route_kind(client, text) -> None:
    tasks_before = client.get("/api/v1/async/tasks").json()["total"]
    assert_clean_error(client.post("/api/v1/synthesize/sft", json={"voice_id": VOICE, "text": text}), 400,
                       "invalid_request")
    # Streamed: refused before the first byte, so a JSON 400 and never a 200 cut short.
    with client.stream("POST", "/api/v1/synthesize/sft", json={"voice_id": VOICE, "text": text, "stream": True}) as r:
        r.read()
    assert_clean_error(r, 400, "invalid_request")
    with client.stream("POST", "/api/v1/synthesize/cross-lingual",
                       data={"text": text, "stream": "true"},
                       files={"prompt_audio": ("v.wav", silent_wav(), "audio/wav")}) as r:
        r.read()
    assert_clean_error(r, 400)
    # Async: the same check before a task exists.
    assert_clean_error(client.post("/api/v1/async/synthesize/sft", json={"voice_id": VOICE, "text": text}), 400,
                       "invalid_request")
    assert client.get("/api/v1/async/tasks").json()["total"] == tasks_before


def test_a_silent_prompt_is_a_clean_400(client) -> None:
    voice_id = unique_id("silent")
    body = assert_clean_error(register(client, voice_id, "sft", audio=silent_wav()), 400, "invalid_audio")
    assert "silent" in body["message"]
    for stream in ("false", "true"):
        response = client.post("/api/v1/synthesize/zero-shot",
                               data={"text": "Hello there.", "prompt_text": PROMPT_TEXT, "stream": stream},
                               files={"prompt_audio": ("s.wav", silent_wav(), "audio/wav")})
        assert_clean_error(response, 400, "invalid_audio")


@pytest.mark.parametrize("fields", [{"speed": True}, {"speed": "1.0"}, {"speed": [1]}, {"seed": True},
                                    {"seed": 1.5}, {"seed": "7"}], ids=str)
def test_numbers_are_numbers(client, fields) -> None:
    for path in ("/api/v1/synthesize/sft", "/api/v1/async/synthesize/sft"):
        response = client.post(path, json={"voice_id": VOICE, "text": "Hello there.", **fields})
        assert_clean_error(response, 422, "validation_error")


def test_the_request_id_finds_the_failure_in_the_server_log(client, serve_cluster) -> None:
    import ray

    request_id = f"robustness-{unique_id('id')}"
    response = client.post("/api/v1/synthesize/sft", json={"voice_id": VOICE, "text": UNSPEAKABLE[0]},
                           headers={"X-Request-ID": request_id})
    assert assert_clean_error(response, 400)["details"]["request_id"] == request_id
    assert response.headers["x-request-id"] == request_id
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for path in logs.glob("replica_*ApiIngress*.log")
                 for line in path.read_text(errors="replace").splitlines() if request_id in line]
        if any("FrontendError" in line for line in lines):
            break
        time.sleep(0.2)
    assert any("FrontendError" in line and "nothing to speak" in line for line in lines), lines


#: One bad request per route: every error body the API can give, checked for leaks.
BAD_REQUESTS = [
    ("GET", "/no/such/route", {}), ("DELETE", "/health", {}), ("GET", "/api/v1/voices/nobody", {}),
    ("PUT", "/api/v1/voices/nobody", {"json": {"name": "x"}}), ("PUT", "/api/v1/voices/nobody", {"json": {"x": 1}}),
    ("DELETE", "/api/v1/voices/nobody", {}), ("GET", "/api/v1/voices/", {"params": {"page": 0}}),
    ("POST", "/api/v1/voices/", {"data": {"voice_id": "../../etc/passwd", "name": "x", "voice_type": "sft"}}),
    ("POST", "/api/v1/voices/", {"data": {"voice_id": "v1", "name": "x", "voice_type": "sft"},
                                 "files": {"audio_file": ("a.wav", b"RIFF\x00\x00", "audio/wav")}}),
    ("POST", "/api/v1/synthesize/sft", {"json": {"voice_id": "nobody", "text": "Hi."}}),
    ("POST", "/api/v1/synthesize/sft", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("POST", "/api/v1/synthesize/instruct", {"json": {"voice_id": VOICE, "text": "Hi.", "instruct_text": " "}}),
    ("POST", "/api/v1/synthesize/zero-shot", {"data": {"text": "Hi."}}),
    ("POST", "/api/v1/synthesize/cross-lingual", {"data": {"text": "Hi.", "voice_id": "nobody"}}),
    ("POST", "/api/v1/synthesize/sft", {"json": {"voice_id": VOICE, "text": "Hi.", "format": "ogg", "stream": True}}),
    ("GET", "/api/v1/audio/..%2F..%2Fetc%2Fpasswd", {}), ("GET", "/api/v1/audio/nothing.wav", {}),
    ("POST", "/api/v1/async/synthesize/sft", {"json": {"voice_id": "nobody", "text": "Hi."}}),
    ("POST", "/api/v1/async/synthesize/zero-shot", {"data": {"text": "Hi.", "voice_id": "nobody"}}),
    ("GET", "/api/v1/async/tasks/task_000000000000/status", {}),
    ("GET", "/api/v1/async/tasks/task_000000000000/result", {}), ("DELETE", "/api/v1/async/tasks/nope", {}),
    ("GET", "/api/v1/async/tasks", {"params": {"limit": 0}}),
    ("POST", "/api/v1/synthesize/sft", {"content": b" " * (300 * 1024),
                                        "headers": {"content-type": "application/json"}}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), BAD_REQUESTS, ids=[f"{m} {p}" for m, p, _ in BAD_REQUESTS])
def test_no_error_body_leaks_anything(client, method, path, kwargs) -> None:
    response = client.request(method, path, **kwargs)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert_clean_error(response, response.status_code, echoed=unquote(path))


def own_processes(title: str) -> list[psutil.Process]:
    """Processes of this test session's cluster (started by this process) whose title holds `title`."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if title in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize(("actor", "routes"), [
    ("ray::TaskManager", ["/api/v1/async/tasks", "/api/v1/async/tasks/task_000000000000/status"]),
    ("ray::VoiceStoreActor", ["/api/v1/voices/", "/api/v1/voices/stats/summary", "/api/v1/voices/nobody"]),
], ids=["task-manager", "voice-store"])
def test_a_restarting_store_is_a_503_with_retry_after_never_a_500(client, actor, routes) -> None:
    [process] = own_processes(actor)
    answers: dict[int, int] = {}
    process.send_signal(signal.SIGKILL)
    killed, recovered = time.monotonic(), None
    while time.monotonic() - killed < 60:
        codes = []
        for route in routes:
            response = client.get(route)
            codes.append(response.status_code)
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                assert_clean_error(response, 503, "service_unavailable")
                assert int(response.headers["retry-after"]) > 0
        if all(code < 500 for code in codes) and time.monotonic() - killed > 2:
            recovered = time.monotonic() - killed
            break
        time.sleep(0.1)
    print(f"{actor} killed: answers {dict(sorted(answers.items()))}, serving again after {recovered} s")
    assert recovered is not None
