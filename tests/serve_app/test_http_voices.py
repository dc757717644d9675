"""The voice registry over HTTP: create, read, list (filters, paging, order), update, delete,
stats, pretrained voices, and every error the contract names for them."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_app.http_helpers import (
    PRETRAINED,
    PROMPT_TEXT,
    assert_error,
    assert_voice,
    create_voice,
    delete_quietly,
    encoded_sample,
    register,
    unique_id,
    wav_bytes,
)

TYPES = ("sft", "zero_shot", "cross_lingual", "instruct")


def unique_language() -> str:
    """A language tag no other test uses (≤16 chars), to filter the shared registry down to one test's voices."""
    return f"t{uuid.uuid4().hex[:10]}"


def stats(client: httpx.Client) -> dict:
    response = client.get("/api/v1/voices/stats/summary")
    assert response.status_code == 200
    return response.json()


# --- create --------------------------------------------------------------------------------------


def test_create_returns_voice_object(client) -> None:
    voice_id = unique_id("create")
    audio = wav_bytes(2.0, 16000)
    response = register(client, voice_id, "zero_shot", audio=audio, name="My Custom Voice",
                        description="A custom voice for testing", language="en", prompt_text=PROMPT_TEXT,
                        audio_format="wav")
    try:
        assert response.status_code == 201, response.text
        voice = response.json()
        assert_voice(voice, voice_id=voice_id, name="My Custom Voice", description="A custom voice for testing",
                     voice_type="zero_shot", language="en", prompt_text=PROMPT_TEXT, audio_format="wav",
                     file_size=len(audio), sample_rate=16000)
        assert voice["duration"] == pytest.approx(2.0, abs=1e-3)
        assert voice["created_at"] == voice["updated_at"]
        fetched = client.get(f"/api/v1/voices/{voice_id}")
        assert fetched.status_code == 200 and fetched.json() == voice
    finally:
        delete_quietly(client, voice_id)


def test_create_optional_fields_default(client) -> None:
    voice = create_voice(client, voice_type="sft")
    try:
        assert_voice(voice, voice_type="sft", description=None, language=None, prompt_text=None, audio_format="wav")
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize("voice_type", TYPES)
def test_every_voice_type_registers(client, voice_type) -> None:
    voice = create_voice(client, voice_type=voice_type)
    try:
        assert voice["voice_type"] == voice_type
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize(("fmt", "rate", "channels"), [("wav", 24000, 1), ("flac", 22050, 1), ("mp3", 44100, 2),
                                                       ("m4a", 16000, 1)])
def test_upload_formats_are_decoded_by_content(client, fmt, rate, channels) -> None:
    audio = encoded_sample(fmt, 2.0, rate, channels)
    voice_id = unique_id(fmt)
    # The file name says .wav whatever the content: the upload is identified by its bytes.
    response = register(client, voice_id, "cross_lingual", audio=audio, audio_format="flac" if fmt == "flac" else "wav")
    try:
        assert response.status_code == 201, response.text
        voice = response.json()
        assert_voice(voice, file_size=len(audio), sample_rate=rate)
        # Lossy codecs pad a little (AAC adds its encoder delay: up to two 1024-sample frames).
        assert voice["duration"] == pytest.approx(2.0, abs=0.0 if fmt in ("wav", "flac") else 2048 / rate + 1e-3)
    finally:
        delete_quietly(client, voice_id)


def test_audio_format_label_is_kept(client) -> None:
    voice = create_voice(client, voice_type="sft", audio_format="mp3")
    try:
        assert voice["audio_format"] == "mp3"
    finally:
        delete_quietly(client, voice["voice_id"])


def test_create_without_trailing_slash(client) -> None:
    voice_id = unique_id("noslash")
    response = client.post("/api/v1/voices", data={"voice_id": voice_id, "name": "N", "voice_type": "sft"},
                           files={"audio_file": ("a.wav", wav_bytes(), "audio/wav")}, follow_redirects=True)
    try:
        assert response.status_code == 201, response.text
        assert client.get(f"/api/v1/voices/{voice_id}").status_code == 200
    finally:
        delete_quietly(client, voice_id)


def test_unicode_metadata_round_trips(client) -> None:
    voice = create_voice(client, voice_type="zero_shot", name="声音 — Ünïcödé", description="描述 ✓",
                         language="zh", prompt_text="你好，这是我的声音样本。")
    try:
        fetched = client.get(f"/api/v1/voices/{voice['voice_id']}").json()
        assert fetched["name"] == "声音 — Ünïcödé" and fetched["description"] == "描述 ✓"
        assert fetched["prompt_text"] == "你好，这是我的声音样本。"
    finally:
        delete_quietly(client, voice["voice_id"])


def test_longest_valid_values_accepted(client) -> None:
    voice_id = "A-z_9" + "x" * 59
    response = register(client, voice_id, "zero_shot", name="n" * 100, description="d" * 500, language="l" * 16,
                        prompt_text="p" * 500)
    try:
        assert response.status_code == 201, response.text
        assert_voice(response.json(), voice_id=voice_id, name="n" * 100, description="d" * 500, language="l" * 16)
    finally:
        delete_quietly(client, voice_id)


def test_duplicate_id_is_409_and_keeps_the_original(client) -> None:
    voice = create_voice(client, voice_type="sft", name="Original")
    try:
        again = register(client, voice["voice_id"], "instruct", name="Impostor")
        assert_error(again, 409, "voice_already_exists", path="/api/v1/voices/",
                     message=f"Voice with ID '{voice['voice_id']}' already exists")
        assert client.get(f"/api/v1/voices/{voice['voice_id']}").json() == voice
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize("voice_id", PRETRAINED)
def test_pretrained_id_is_409(client, voice_id) -> None:
    before = stats(client)
    assert_error(register(client, voice_id, "sft"), 409, "voice_already_exists")
    assert stats(client) == before
    assert voice_id in client.get("/api/v1/voices/pretrained/list").json()["pretrained_voices"]


def test_concurrent_creates_of_one_id(serve_cluster) -> None:
    voice_id = unique_id("race")
    audio = wav_bytes()

    def create(index: int) -> httpx.Response:
        with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
            return register(client, voice_id, "sft", audio=audio, name=f"Racer {index}")

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(create, range(20)))
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        try:
            codes = sorted(response.status_code for response in responses)
            assert codes == [201] + [409] * 19, codes
            for response in responses:
                if response.status_code == 409:
                    assert_error(response, 409, "voice_already_exists", path="/api/v1/voices/")
            [winner] = [response.json() for response in responses if response.status_code == 201]
            assert client.get(f"/api/v1/voices/{voice_id}").json() == winner
            listed = [v for v in client.get("/api/v1/voices/", params={"page_size": 100}).json()["voices"]
                      if v["voice_id"] == voice_id]
            assert listed == [winner]
        finally:
            delete_quietly(client, voice_id)


# --- create: 422 and 400 ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "bad_field"), [
    ({"voice_type": "robot"}, "voice_type"),
    ({"audio_format": "ogg"}, "audio_format"),
    ({"voice_id": "a b"}, "voice_id"),
    ({"voice_id": "a.b"}, "voice_id"),
    ({"voice_id": "a/b"}, "voice_id"),
    ({"voice_id": "../x"}, "voice_id"),
    ({"voice_id": "x" * 65}, "voice_id"),
    ({"name": "n" * 101}, "name"),
    ({"description": "d" * 501}, "description"),
    ({"language": "l" * 17}, "language"),
    ({"prompt_text": "p" * 501}, "prompt_text"),
])
def test_create_invalid_field_is_422(client, fields, bad_field) -> None:
    before = stats(client)
    data = {"voice_id": unique_id("bad"), "name": "Bad", "voice_type": "sft", **fields}
    response = client.post("/api/v1/voices/", data=data, files={"audio_file": ("a.wav", wav_bytes(), "audio/wav")})
    body = assert_error(response, 422, "validation_error", path="/api/v1/voices/")
    assert any(error["loc"][-1] == bad_field for error in body["details"]["errors"]), body
    assert stats(client) == before


@pytest.mark.parametrize("missing", ["voice_id", "name", "voice_type", "audio_file"])
def test_create_missing_field_is_422(client, missing) -> None:
    data = {"voice_id": unique_id("missing"), "name": "Missing", "voice_type": "sft"}
    files = {"audio_file": ("a.wav", wav_bytes(), "audio/wav")}
    if missing == "audio_file":
        files = {"other_file": ("a.wav", wav_bytes(), "audio/wav")}
    else:
        del data[missing]
    body = assert_error(client.post("/api/v1/voices/", data=data, files=files), 422, "validation_error")
    assert any(error["loc"][-1] == missing for error in body["details"]["errors"]), body


@pytest.mark.parametrize("prompt_text", [None, "", "   "])
def test_zero_shot_voice_needs_prompt_text(client, prompt_text) -> None:
    voice_id = unique_id("noprompt")
    data = {"voice_id": voice_id, "name": "No prompt", "voice_type": "zero_shot"}
    if prompt_text is not None:
        data["prompt_text"] = prompt_text
    response = client.post("/api/v1/voices/", data=data, files={"audio_file": ("a.wav", wav_bytes(), "audio/wav")})
    assert_error(response, 400, "invalid_request", path="/api/v1/voices/")
    assert_error(client.get(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found")


@pytest.mark.parametrize("case", ["empty", "garbage", "too_short", "too_long", "text_file"])
def test_bad_audio_is_400_invalid_audio(client, case) -> None:
    audio = {"empty": b"", "garbage": bytes(range(256)) * 64, "too_short": wav_bytes(0.3),
             "too_long": wav_bytes(31.0, 8000), "text_file": b"Hello, this is not audio.\n" * 100}[case]
    voice_id = unique_id(case)
    before = stats(client)
    response = register(client, voice_id, "sft", audio=audio)
    assert_error(response, 400, "invalid_audio", path="/api/v1/voices/")
    assert_error(client.get(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found")
    assert stats(client) == before


def test_audio_limits_are_inclusive_enough(client) -> None:
    """0.5-30 s are accepted (a little inside each bound, to stay clear of rounding)."""
    ids = [unique_id("short"), unique_id("long")]
    try:
        assert register(client, ids[0], "sft", audio=wav_bytes(0.55)).status_code == 201
        assert register(client, ids[1], "sft", audio=wav_bytes(29.5, 8000)).status_code == 201
    finally:
        delete_quietly(client, *ids)


# --- read ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_unknown_voice_is_404_voice_not_found(client, method) -> None:
    voice_id = unique_id("ghost")
    kwargs = {"json": {"name": "x"}} if method == "PUT" else {}
    response = client.request(method, f"/api/v1/voices/{voice_id}", **kwargs)
    assert_error(response, 404, "voice_not_found", path=f"/api/v1/voices/{voice_id}",
                 message=f"Voice with ID '{voice_id}' not found")


def test_seed_error_example_shape(client) -> None:
    response = client.get("/api/v1/voices/non_existent")
    assert response.status_code == 404
    body = response.json()
    assert body["details"].pop("request_id") == response.headers["x-request-id"]
    assert body == {"error": "voice_not_found", "message": "Voice with ID 'non_existent' not found",
                    "details": {"path": "/api/v1/voices/non_existent"}}


# --- list ------------------------------------------------------------------------------------------


def test_list_shape_and_both_slash_forms(client) -> None:
    voice = create_voice(client, voice_type="sft")
    try:
        with_slash = client.get("/api/v1/voices/", params={"page_size": 100})
        without = client.get("/api/v1/voices", params={"page_size": 100}, follow_redirects=True)
        assert with_slash.status_code == without.status_code == 200
        assert with_slash.json() == without.json()
        body = with_slash.json()
        assert set(body) == {"voices", "total", "page", "page_size"}
        assert body["page"] == 1 and body["page_size"] == 100
        for listed in body["voices"]:
            assert_voice(listed)
        assert voice in body["voices"]
        assert client.get("/api/v1/voices/").json()["page_size"] == 50  # the default
    finally:
        delete_quietly(client, voice["voice_id"])


def test_list_excludes_pretrained_voices(client) -> None:
    total = client.get("/api/v1/voices/").json()["total"]
    ids = [v["voice_id"] for page in range(1, total // 100 + 2)
           for v in client.get("/api/v1/voices/", params={"page": page, "page_size": 100}).json()["voices"]]
    assert not set(ids) & set(PRETRAINED)


def test_list_filters_order_and_paging(client) -> None:
    language = unique_language()
    # Ids deliberately not in creation order: the list orders by created_at first.
    ids = [unique_id("zz"), unique_id("aa"), unique_id("mm")]
    other = unique_id("other")
    try:
        voices = [create_voice(client, voice_id, voice_type, language=language)
                  for voice_id, voice_type in zip(ids, ["zero_shot", "sft", "zero_shot"], strict=True)]
        create_voice(client, other, "zero_shot", language=unique_language())
        assert [v["voice_id"] for v in sorted(voices, key=lambda v: (v["created_at"], v["voice_id"]))] == ids

        everything = client.get("/api/v1/voices/", params={"language": language}).json()
        assert everything["total"] == 3
        assert everything["voices"] == voices

        zero_shot = client.get("/api/v1/voices/", params={"language": language, "voice_type": "zero_shot"}).json()
        assert zero_shot["total"] == 2 and [v["voice_id"] for v in zero_shot["voices"]] == [ids[0], ids[2]]
        sft = client.get("/api/v1/voices/", params={"language": language, "voice_type": "sft"}).json()
        assert [v["voice_id"] for v in sft["voices"]] == [ids[1]]
        none = client.get("/api/v1/voices/", params={"language": language, "voice_type": "instruct"}).json()
        assert none == {"voices": [], "total": 0, "page": 1, "page_size": 50}

        pages = [client.get("/api/v1/voices/", params={"language": language, "page": page, "page_size": 2}).json()
                 for page in (1, 2, 3)]
        assert [[v["voice_id"] for v in page["voices"]] for page in pages] == [ids[:2], ids[2:], []]
        assert [page["total"] for page in pages] == [3, 3, 3]
        assert [(page["page"], page["page_size"]) for page in pages] == [(1, 2), (2, 2), (3, 2)]

        by_type = client.get("/api/v1/voices/", params={"voice_type": "zero_shot", "page_size": 100}).json()
        assert other in [v["voice_id"] for v in by_type["voices"]]
        assert all(v["voice_type"] == "zero_shot" for v in by_type["voices"])
        assert client.get("/api/v1/voices/", params={"language": unique_language()}).json()["total"] == 0
    finally:
        delete_quietly(client, *ids, other)


def test_language_filter_is_exact(client) -> None:
    language = unique_language()
    voice = create_voice(client, voice_type="sft", language=language)
    try:
        for near_miss in (language.upper(), language[:-1], f" {language}"):
            assert client.get("/api/v1/voices/", params={"language": near_miss}).json()["total"] == 0
        assert client.get("/api/v1/voices/", params={"language": language}).json()["voices"] == [voice]
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize("query", ["page_size=0", "page_size=101", "page_size=abc", "page=0", "page=-1",
                                   "page=x", "voice_type=robot", "voice_type=ZERO_SHOT", f"language={'l' * 17}"])
def test_list_bad_query_is_422(client, query) -> None:
    response = client.get(f"/api/v1/voices/?{query}")
    body = assert_error(response, 422, "validation_error", path="/api/v1/voices/")
    assert any(error["loc"][0] == "query" for error in body["details"]["errors"]), body


def test_list_extreme_valid_paging(client) -> None:
    assert client.get("/api/v1/voices/", params={"page_size": 1}).json()["page_size"] == 1
    assert client.get("/api/v1/voices/", params={"page_size": 100}).json()["page_size"] == 100
    past = client.get("/api/v1/voices/", params={"page": 10**6}).json()
    assert past["voices"] == [] and past["page"] == 10**6


# --- update ----------------------------------------------------------------------------------------


def test_update_changes_metadata_and_bumps_updated_at(client) -> None:
    voice = create_voice(client, voice_type="zero_shot", description="old", language="en")
    voice_id = voice["voice_id"]
    try:
        time.sleep(0.01)
        response = client.put(f"/api/v1/voices/{voice_id}",
                              json={"name": "Updated Voice Name", "description": "Updated description"})
        assert response.status_code == 200, response.text
        updated = response.json()
        assert_voice(updated, name="Updated Voice Name", description="Updated description", language="en")
        assert updated["updated_at"] > voice["updated_at"]
        unchanged = {key for key in voice if key not in ("name", "description", "updated_at")}
        assert {key: updated[key] for key in unchanged} == {key: voice[key] for key in unchanged}
        assert client.get(f"/api/v1/voices/{voice_id}").json() == updated

        cleared = client.put(f"/api/v1/voices/{voice_id}", json={"description": None, "language": "fr"}).json()
        assert cleared["description"] is None and cleared["language"] == "fr"
        assert cleared["name"] == "Updated Voice Name"
        assert cleared["updated_at"] > updated["updated_at"]

        empty = client.put(f"/api/v1/voices/{voice_id}", json={})
        assert empty.status_code == 200 and empty.json()["name"] == "Updated Voice Name"
    finally:
        delete_quietly(client, voice_id)


def test_update_is_seen_by_filters_and_stats(client) -> None:
    old, new = unique_language(), unique_language()
    voice = create_voice(client, voice_type="sft", language=old)
    try:
        assert stats(client)["languages"].get(old) == 1
        client.put(f"/api/v1/voices/{voice['voice_id']}", json={"language": new})
        assert client.get("/api/v1/voices/", params={"language": old}).json()["total"] == 0
        assert client.get("/api/v1/voices/", params={"language": new}).json()["total"] == 1
        languages = stats(client)["languages"]
        assert old not in languages and languages.get(new) == 1
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize("body", [
    {"voice_id": "other"}, {"voice_type": "sft"}, {"prompt_text": "x"}, {"unknown": 1}, {"name": "ok", "extra": 1},
    {"name": ""}, {"name": "n" * 101}, {"name": None}, {"name": 5}, {"description": "d" * 501},
    {"language": "l" * 17}, [], "just a string",
])
def test_update_invalid_body_is_422(client, zero_shot_voice, body) -> None:
    voice_id = zero_shot_voice["voice_id"]
    before = client.get(f"/api/v1/voices/{voice_id}").json()
    response = client.put(f"/api/v1/voices/{voice_id}", json=body)
    assert_error(response, 422, "validation_error", path=f"/api/v1/voices/{voice_id}")
    assert client.get(f"/api/v1/voices/{voice_id}").json() == before


def test_update_malformed_json_is_422(client, zero_shot_voice) -> None:
    voice_id = zero_shot_voice["voice_id"]
    response = client.put(f"/api/v1/voices/{voice_id}", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert_error(response, 422, "validation_error")


# --- delete ----------------------------------------------------------------------------------------


def test_delete_frees_the_id(client) -> None:
    voice = create_voice(client, voice_type="sft", name="First")
    voice_id = voice["voice_id"]
    try:
        response = client.delete(f"/api/v1/voices/{voice_id}")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"message", "voice_id"} and body["voice_id"] == voice_id and body["message"]
        assert_error(client.get(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found")
        assert_error(client.delete(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found",
                     message=f"Voice with ID '{voice_id}' not found")
        again = register(client, voice_id, "instruct", name="Second")
        assert again.status_code == 201
        assert again.json()["name"] == "Second" and again.json()["voice_type"] == "instruct"
    finally:
        delete_quietly(client, voice_id)


def test_deleted_voice_cannot_synthesize(client) -> None:
    voice = create_voice(client, voice_type="sft")
    client.delete(f"/api/v1/voices/{voice['voice_id']}")
    response = client.post("/api/v1/synthesize/sft", json={"text": "Hi there.", "voice_id": voice["voice_id"]})
    assert_error(response, 404, "voice_not_found", message=f"Voice with ID '{voice['voice_id']}' not found")


# --- stats and pretrained --------------------------------------------------------------------------


def test_stats_shape_and_sums(client) -> None:
    language = unique_language()
    before = stats(client)
    assert set(before) == {"total_voices", "active_voices", "voice_types", "languages", "total_duration",
                           "total_size"}
    assert set(before["voice_types"]) == set(TYPES)
    audios = [wav_bytes(1.0), wav_bytes(2.0, 24000), wav_bytes(1.5, 22050)]
    types = ["sft", "cross_lingual", "sft"]
    ids = [unique_id("stats") for _ in audios]
    try:
        for voice_id, voice_type, audio in zip(ids, types, audios, strict=True):
            assert register(client, voice_id, voice_type, audio=audio, language=language).status_code == 201
        after = stats(client)
        assert after["total_voices"] == before["total_voices"] + 3
        assert after["active_voices"] == before["active_voices"] + 3
        assert after["voice_types"]["sft"] == before["voice_types"]["sft"] + 2
        assert after["voice_types"]["cross_lingual"] == before["voice_types"]["cross_lingual"] + 1
        assert after["voice_types"]["zero_shot"] == before["voice_types"]["zero_shot"]
        assert after["voice_types"]["instruct"] == before["voice_types"]["instruct"]
        assert after["languages"][language] == 3
        assert after["total_duration"] == pytest.approx(before["total_duration"] + 4.5, abs=1e-2)
        assert after["total_size"] == before["total_size"] + sum(len(audio) for audio in audios)
    finally:
        delete_quietly(client, *ids)
    assert stats(client) == before


def test_stats_all_type_keys_even_when_zero(client) -> None:
    body = stats(client)
    assert set(body["voice_types"]) == set(TYPES)
    assert all(isinstance(count, int) and count >= 0 for count in body["voice_types"].values())
    assert sum(body["voice_types"].values()) == body["total_voices"]
    assert sum(body["languages"].values()) <= body["total_voices"]


def test_pretrained_list(client) -> None:
    voice = create_voice(client, voice_type="sft")
    try:
        response = client.get("/api/v1/voices/pretrained/list")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"pretrained_voices", "total"}
        assert sorted(body["pretrained_voices"]) == sorted(PRETRAINED)
        assert body["total"] == len(body["pretrained_voices"]) == 2
    finally:
        delete_quietly(client, voice["voice_id"])


def test_pretrained_voice_cannot_be_deleted(client) -> None:
    """Pretrained voices belong to the model: the registry's DELETE cannot remove them."""
    response = client.delete("/api/v1/voices/pretrained_voice_001")
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)
    assert "pretrained_voice_001" in client.get("/api/v1/voices/pretrained/list").json()["pretrained_voices"]
    synthesized = client.post("/api/v1/synthesize/sft", json={"text": "Hi.", "voice_id": "pretrained_voice_001"})
    assert synthesized.status_code == 200
