"""The whole app with its three stores on s3:// URIs (a real S3-protocol server, pyarrow's client):
one winner among concurrent registrations of one id, and after a full restart of Ray and Serve
every voice, task and synthesized file is back. No log of the run holds the S3 secret.

The session's app is restarted onto the S3 stores and back, so this runs after every other test.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve_app.http_helpers import PROMPT_TEXT, check_audio, download, unique_id, wav_bytes
from tests.serve_app.test_async_tasks import submit, wait_for

pytestmark = pytest.mark.restarts_cluster


@pytest.fixture
def s3_app(serve_controller, serve_cluster, s3):
    """The session's app restarted with its stores on S3 (and its Ray logs in a folder of its own)."""
    local_settings, local_temp_dir = dict(serve_controller.settings), serve_controller.temp_dir
    temp_dir = tempfile.mkdtemp(prefix="ray-s3-")  # short: Ray's socket paths live under it
    serve_controller.settings.update(voice_store_uri=s3.uri("voices"), task_store_uri=s3.uri("tasks"),
                                     output_store_uri=s3.uri("audio"))
    serve_controller.temp_dir = temp_dir
    serve_controller.restart()
    try:
        yield {"base_url": serve_cluster["base_url"], "settings": serve_controller.settings, "temp_dir": temp_dir}
    finally:
        serve_controller.settings, serve_controller.temp_dir = local_settings, local_temp_dir
        serve_controller.restart()
        shutil.rmtree(temp_dir, ignore_errors=True)


def register(client: httpx.Client, voice_id: str, name: str) -> httpx.Response:
    return client.post("/api/v1/voices/", files={"audio_file": ("v.wav", wav_bytes(2.0), "audio/wav")},
                       data={"voice_id": voice_id, "name": name, "voice_type": "zero_shot", "prompt_text": PROMPT_TEXT})


def test_stores_on_s3_keep_everything_across_a_full_restart(s3_app, serve_controller, s3) -> None:
    contested = unique_id("s3race")
    with httpx.Client(base_url=s3_app["base_url"], timeout=180) as client:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda index: register(client, contested, f"writer {index}"), range(6)))
        statuses = sorted(reply.status_code for reply in replies)
        assert statuses == [201] + [409] * 5, [reply.text for reply in replies if reply.status_code != 409]
        [winner] = [reply.json() for reply in replies if reply.status_code == 201]

        other = unique_id("s3keep")
        assert register(client, other, "kept").status_code == 201
        voices = {voice_id: client.get(f"/api/v1/voices/{voice_id}").json() for voice_id in (contested, other)}
        assert voices[contested] == winner

        spoken = client.post("/api/v1/synthesize/zero-shot", data={"text": "Hello there.", "voice_id": other,
                                                                    "seed": "5"})
        assert spoken.status_code == 200, spoken.text
        audio_before = download(client, spoken.json())
        task_ids = [submit(client, mode, seed=seed).json()["task_id"] for seed, mode in enumerate(["sft", "instruct"])]
        tasks = {task_id: wait_for(client, task_id) for task_id in task_ids}
        assert {task["status"] for task in tasks.values()} == {"completed"}, tasks
        results = {task_id: client.get(f"/api/v1/async/tasks/{task_id}/result").json() for task_id in task_ids}
        task_audio = {task_id: download(client, result) for task_id, result in results.items()}

    serve_controller.restart()  # a new Ray instance: every actor restores from the bucket

    with httpx.Client(base_url=s3_app["base_url"], timeout=180) as client:
        for voice_id, voice in voices.items():
            assert client.get(f"/api/v1/voices/{voice_id}").json() == voice
        listed = client.get("/api/v1/voices/", params={"page_size": 100}).json()["voices"]
        assert set(voices) <= {voice["voice_id"] for voice in listed}
        for task_id, task in tasks.items():
            assert client.get(f"/api/v1/async/tasks/{task_id}/status").json() == task
            assert client.get(f"/api/v1/async/tasks/{task_id}/result").json() == results[task_id]
            assert download(client, results[task_id]) == task_audio[task_id]
        assert download(client, spoken.json()) == audio_before
        # The restored voice's features are intact: the same seed gives the very same audio.
        again = client.post("/api/v1/synthesize/zero-shot", data={"text": "Hello there.", "voice_id": other,
                                                                   "seed": "5"})
        assert again.status_code == 200
        audio = download(client, again.json())
        check_audio(audio, "wav", again.json()["duration"])
        assert audio == audio_before
        assert register(client, contested, "late").status_code == 409

    logs = [path for path in Path(s3_app["temp_dir"]).rglob("*") if path.suffix in (".log", ".out", ".err")]
    assert logs and [path for path in logs if path.is_file() and s3.secret_key.encode() in path.read_bytes()] == []
