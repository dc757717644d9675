"""Optional API keys and CORS, on the ASGI app (the session's service runs without keys): every route
but /health needs a key when hashes are configured, and a refusal has the route family's error shape."""

from __future__ import annotations

import hashlib
import logging

import pytest
from starlette.testclient import TestClient

from serve_app.api.auth import accepted_key_hashes
from tests.serve_app.http_helpers import assert_error
from tests.serve_app.stand_in import stand_in_app
from tts_core.settings import Settings

KEY, OTHER_KEY = "sk-test-0123456789", "sk-other-abcdef"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(stand_in_app(api_key_hashes=[sha256(KEY), sha256(OTHER_KEY)]))


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and body["error"]["type"] in ("invalid_request_error", "server_error")
    assert body["error"]["code"] == code
    return body["error"]


ROUTES = [("GET", "/"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/api/v1/voices/pretrained/list"),
          ("POST", "/api/v1/synthesize/sft"), ("GET", "/api/v1/audio/missing.wav"), ("GET", "/api/v1/nowhere")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_own_routes_need_a_key(client, method, path) -> None:
    response = client.request(method, path)
    body = assert_error(response, 401, "unauthorized")
    assert "Missing API key" in body["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(client.request(method, path, headers={"Authorization": "Bearer sk-wrong"}), 401, "unauthorized",
                 message="Incorrect API key provided.")


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/tts-1", "/v1/audio/speech", "/v1/nowhere"])
def test_openai_routes_need_a_key_in_openai_shape(client, path) -> None:
    method = "POST" if path == "/v1/audio/speech" else "GET"
    error = assert_openai_error(client.request(method, path), 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    error = assert_openai_error(client.request(method, path, headers={"X-API-Key": "sk-wrong"}), 401,
                                "invalid_api_key")
    assert error["message"] == "Incorrect API key provided."


def test_health_needs_no_key(client) -> None:
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER_KEY}"},
                                     {"X-API-Key": KEY}])
def test_a_good_key_opens_every_route(client, headers) -> None:
    assert client.get("/api/v1/voices/pretrained/list", headers=headers).json()["total"] == 1
    assert client.get("/v1/models", headers=headers).json()["object"] == "list"
    assert client.get("/docs", headers=headers).status_code == 200
    speech = client.post("/v1/audio/speech", headers=headers, json={
        "model": "tts-1", "input": "Hello.", "voice": "pretrained_voice_001", "response_format": "pcm"})
    assert speech.status_code == 200 and len(speech.content) > 0


def test_keys_never_appear_in_answers_or_logs(client, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        refused = client.get("/v1/models", headers={"Authorization": "Bearer sk-leaked-key-42"})
        client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert "sk-leaked-key-42" not in refused.text
    assert "sk-leaked-key-42" not in caplog.text and KEY not in caplog.text


def test_without_hashes_no_key_is_needed() -> None:
    open_client = TestClient(stand_in_app())
    assert open_client.get("/api/v1/voices/pretrained/list").status_code == 200
    assert open_client.get("/v1/models").status_code == 200


def test_hashes_from_a_file(tmp_path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team A\n{sha256(KEY).upper()}\n\n{sha256(OTHER_KEY)}  # team B\n")
    settings = Settings(api_key_file=str(keys), api_key_hashes=[sha256("third")])
    assert accepted_key_hashes(settings) == {sha256(KEY), sha256(OTHER_KEY), sha256("third")}
    client = TestClient(stand_in_app(api_key_file=str(keys)))
    assert client.get("/v1/models", headers={"X-API-Key": OTHER_KEY}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "third"}).status_code == 401

    keys.write_text("not-a-hash\n")
    with pytest.raises(ValueError, match="line 1"):
        accepted_key_hashes(settings)
    with pytest.raises(ValueError, match="cannot be read"):
        accepted_key_hashes(Settings(api_key_file=str(tmp_path / "absent.txt")))


def test_hash_settings_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("COSYVOICE_API_KEY_HASHES", f"{sha256(KEY)}, {sha256(OTHER_KEY)}")
    monkeypatch.setenv("COSYVOICE_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings()
    assert settings.api_key_hashes == [sha256(KEY), sha256(OTHER_KEY)]
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    with pytest.raises(ValueError, match="SHA-256"):
        Settings(api_key_hashes=[KEY])


def test_cors_lets_browsers_in_before_the_key_check() -> None:
    client = TestClient(stand_in_app(api_key_hashes=[sha256(KEY)], cors_origins=["https://app.example"]))
    preflight = client.options("/v1/audio/speech", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    answer = client.get("/v1/models", headers={"Origin": "https://app.example", "X-API-Key": KEY})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    refused = client.get("/v1/models", headers={"Origin": "https://app.example"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/v1/models", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in other.headers


WS_PATH = "/api/v1/ws/synthesize"


def websocket_answer(client: TestClient, url: str, headers: dict | None = None) -> tuple[dict, int]:
    """The first event of a speech WebSocket opened with a config for a voice the stand-in does not
    have, and the socket's close code."""
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect(url, headers=dict(headers or {})) as socket:
        socket.send_json({"type": "config", "voice_id": "no_such_voice"})
        event = socket.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
    return event, closed.value.code


@pytest.mark.parametrize(("url", "headers"), [(WS_PATH, None), (WS_PATH, {"X-API-Key": "sk-wrong"}),
                                              (f"{WS_PATH}?api_key=sk-wrong", None)])
def test_the_speech_websocket_needs_a_key(client, url, headers) -> None:
    event, code = websocket_answer(client, url, headers)
    assert event["type"] == "error" and event["error"] == "unauthorized", event
    assert event["details"]["path"] == WS_PATH and event["details"]["request_id"]
    assert code == 1008
    assert "sk-wrong" not in str(event)


@pytest.mark.parametrize(("url", "headers"), [(WS_PATH, {"Authorization": f"Bearer {KEY}"}),
                                              (WS_PATH, {"X-API-Key": OTHER_KEY}),
                                              (f"{WS_PATH}?api_key={KEY}", None)])
def test_a_good_key_opens_the_speech_websocket(client, url, headers) -> None:
    # Past the key check, the session itself answers: the voice is unknown.
    event, code = websocket_answer(client, url, headers)
    assert event["type"] == "error" and event["error"] == "voice_not_found", event
    assert code == 1008


def test_the_playground_page_needs_no_key(client) -> None:
    redirect = client.get("/playground", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/playground/"
    page = client.get("/playground/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert client.get("/playground/playground.js").status_code == 200
    assert_error(client.get("/playgroundx"), 401, "unauthorized")
