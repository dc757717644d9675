"""Durability: after Serve and Ray are shut down completely and started again on the same storage,
every registered voice is back, metadata and features, and synthesizes exactly as before.

This restarts the session's cluster, so it is marked to run after every other test of the session; the
cluster comes back on the same port, so `serve_cluster` stays valid afterwards.
"""

from __future__ import annotations

import httpx
import pytest

from tests.serve_app.http_helpers import (
    PROMPT_TEXT,
    assert_error,
    check_audio,
    delete_quietly,
    download,
    encoded_sample,
    register,
    unique_id,
    wav_bytes,
)

pytestmark = pytest.mark.restarts_cluster


def synthesize_all(client: httpx.Client, voices: dict[str, str]) -> dict[str, dict]:
    """One seeded synthesis per voice, in a mode fitting its type; returns the answers."""
    answers = {}
    for voice_id, voice_type in voices.items():
        if voice_type == "zero_shot":
            response = client.post("/api/v1/synthesize/zero-shot",
                                   data={"text": "Hello there, friend.", "voice_id": voice_id, "seed": "11"})
        elif voice_type == "cross_lingual":
            response = client.post("/api/v1/synthesize/cross-lingual",
                                   data={"text": "你好，朋友。", "voice_id": voice_id, "seed": "12", "format": "flac"})
        else:
            response = client.post("/api/v1/synthesize/instruct",
                                   json={"text": "Hello there.", "voice_id": voice_id, "seed": 13,
                                         "instruct_text": "Speak slowly."})
        assert response.status_code == 200, response.text
        answers[voice_id] = response.json()
    return answers


def snapshot(client: httpx.Client, voice_ids: list[str], language: str) -> dict:
    return {"voices": {voice_id: client.get(f"/api/v1/voices/{voice_id}").json() for voice_id in voice_ids},
            "listed": client.get("/api/v1/voices/", params={"language": language}).json(),
            "stats": client.get("/api/v1/voices/stats/summary").json(),
            "pretrained": client.get("/api/v1/voices/pretrained/list").json()}


def test_voices_survive_a_full_restart(serve_controller, serve_cluster) -> None:
    language = f"p{unique_id('')[-9:]}"
    voices = {unique_id("keep_zs"): "zero_shot", unique_id("keep_xl"): "cross_lingual",
              unique_id("keep_in"): "instruct"}
    uploads = {"zero_shot": wav_bytes(2.0, 16000, f0=120.0), "cross_lingual": encoded_sample("flac", 2.5, 24000),
               "instruct": wav_bytes(1.5, 22050, f0=200.0)}
    deleted = unique_id("gone")
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        for voice_id, voice_type in voices.items():
            response = register(client, voice_id, voice_type, audio=uploads[voice_type], language=language,
                                description=f"kept {voice_type}")
            assert response.status_code == 201, response.text
        zero_shot_id = next(iter(voices))
        assert client.put(f"/api/v1/voices/{zero_shot_id}", json={"name": "Renamed before restart"}).status_code == 200
        assert register(client, deleted, "sft").status_code == 201
        assert client.delete(f"/api/v1/voices/{deleted}").status_code == 200

        before = snapshot(client, list(voices), language)
        assert before["listed"]["total"] == 3
        answers = synthesize_all(client, voices)
        audio_before = {voice_id: download(client, answer) for voice_id, answer in answers.items()}

    serve_controller.restart()

    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        try:
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "healthy"
            after = snapshot(client, list(voices), language)
            assert after == before
            assert after["voices"][zero_shot_id]["name"] == "Renamed before restart"
            assert after["voices"][zero_shot_id]["prompt_text"] == PROMPT_TEXT
            assert_error(client.get(f"/api/v1/voices/{deleted}"), 404, "voice_not_found")

            # Files synthesized before the restart are still served.
            for voice_id, answer in answers.items():
                assert download(client, answer) == audio_before[voice_id]
            # The features came back intact: the same seed gives the very same audio.
            again = synthesize_all(client, voices)
            for voice_id, answer in again.items():
                assert answer["audio_url"] != answers[voice_id]["audio_url"]
                audio = download(client, answer)
                check_audio(audio, answer["format"], answer["duration"])
                assert audio == audio_before[voice_id], voice_id

            # The registry still works normally after a restart: ids stay taken, new ones register.
            taken = register(client, zero_shot_id, "zero_shot")
            assert_error(taken, 409, "voice_already_exists")
            fresh = unique_id("after")
            assert register(client, fresh, "sft").status_code == 201
            assert client.get("/api/v1/voices/", params={"language": language}).json()["total"] == 3
            delete_quietly(client, fresh)
        finally:
            delete_quietly(client, *voices)
