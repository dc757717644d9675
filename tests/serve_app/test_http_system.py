"""System routes and the routing errors every path shares: 404 not_found, 405, the error shape."""

from __future__ import annotations

import pytest

from tests.serve_app.http_helpers import assert_error


def test_root(client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"message", "version", "docs"}
    assert body["docs"] == "/docs"
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["version"], str) and body["version"]


def test_health_once_loaded(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["voice_manager_ready"] is True
    assert body["async_synthesis_ready"] is True
    # dtype: auto resolves on the LLM's device: fp32 on CPUs without native bf16.
    assert body["precision"] == ("bf16" if native_cpu_bf16() else "fp32")


def native_cpu_bf16() -> bool:
    flags = open("/proc/cpuinfo").read()
    return " avx512_bf16" in flags or " amx_tile" in flags


def test_docs_and_openapi_served(client) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/voices/", "/api/v1/voices/{voice_id}", "/api/v1/voices/stats/summary",
                 "/api/v1/voices/pretrained/list", "/api/v1/synthesize/sft", "/api/v1/synthesize/zero-shot",
                 "/api/v1/synthesize/cross-lingual", "/api/v1/synthesize/instruct", "/api/v1/audio/{filename}"):
        assert path in schema["paths"], path


@pytest.mark.parametrize("path", ["/nope", "/api/v1", "/api/v1/synthesize", "/api/v1/synthesize/robot",
                                  "/api/v1/voices/stats", "/api/v2/voices/", "/api/v1/audio/", "/health/extra"])
def test_unknown_route_is_404_not_found(client, path) -> None:
    response = client.get(path)
    if path == "/api/v1/voices/stats":  # matches /voices/{voice_id}
        assert_error(response, 404, "voice_not_found", message="Voice with ID 'stats' not found")
    else:
        assert_error(response, 404, "not_found")


def test_unknown_route_other_methods(client) -> None:
    assert_error(client.post("/nope", json={}), 404, "not_found")
    assert_error(client.delete("/api/v1/nothing/here"), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/"),
    ("POST", "/health"),
    ("PUT", "/api/v1/voices/"),
    ("DELETE", "/api/v1/voices"),
    ("PATCH", "/api/v1/voices/some_voice"),
    ("POST", "/api/v1/voices/some_voice"),
    ("POST", "/api/v1/voices/stats/summary"),
    ("DELETE", "/api/v1/voices/pretrained/list"),
    ("GET", "/api/v1/synthesize/sft"),
    ("PUT", "/api/v1/synthesize/zero-shot"),
    ("GET", "/api/v1/synthesize/cross-lingual"),
    ("DELETE", "/api/v1/synthesize/instruct"),
    ("POST", "/api/v1/audio/x.wav"),
])
def test_wrong_method_is_405(client, method, path) -> None:
    response = client.request(method, path)
    body = assert_error(response, 405, "method_not_allowed")
    assert body["details"]["path"] == path
