"""Audio downloads: content types, 404 audio_not_found, and names that try to leave the output folder."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.serve_app.http_helpers import assert_error, check_audio, create_voice, delete_quietly, download


@pytest.fixture(scope="module")
def stores(serve_cluster) -> dict[str, Path]:
    settings = serve_cluster["settings"]
    return {"voices": Path(settings["voice_store_uri"]), "audio": Path(settings["output_store_uri"])}


def raw_get(base_url: str, target: str) -> tuple[int, dict, bytes]:
    """GET with the request target sent byte for byte (httpx would resolve `..` before sending)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_download_content_type_and_bytes(client, fmt) -> None:
    response = client.post("/api/v1/synthesize/sft", json={"text": "Hello.", "voice_id": "pretrained_voice_001",
                                                           "format": fmt})
    if response.status_code == 400:  # mp3 without an encoder on this server
        assert_error(response, 400, "unsupported_format")
        return
    body = response.json()
    data = download(client, body)  # checks the Content-Type
    check_audio(data, fmt, body["duration"])
    name = body["audio_url"].rsplit("/", 1)[1]
    assert client.get(f"/api/v1/audio/{name}").content == data


@pytest.mark.parametrize("name", ["nope.wav", "0123456789abcdef0123456789abcdef.wav", "missing.flac", "x.mp3",
                                  "x.txt", "noextension", ".hidden.wav", "a..b.wav", "-dash.wav", "x" * 300])
def test_unknown_audio_is_404(client, name) -> None:
    assert_error(client.get(f"/api/v1/audio/{name}"), 404, "audio_not_found")


def test_existing_file_with_other_extension_is_404(client) -> None:
    body = client.post("/api/v1/synthesize/sft", json={"text": "Hello.", "voice_id": "pretrained_voice_001"}).json()
    stem = body["audio_url"].rsplit("/", 1)[1].rsplit(".", 1)[0]
    for other in ("flac", "mp3", "txt"):
        assert_error(client.get(f"/api/v1/audio/{stem}.{other}"), 404, "audio_not_found")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the voice and audio stores and the files beside them (the async task store, which
    other tests' tasks may still be writing to, left out)."""
    files = [path for path in root.iterdir() if path.is_file()]
    files += [path for store in ("voices", "audio") for path in (root / store).rglob("*") if path.is_file()]
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(files)}


@pytest.fixture
def planted(client, stores):
    """A registered voice (a parquet file in the voice store) and a file just outside the output folder."""
    voice = create_voice(client, voice_type="sft")
    outside = stores["audio"].parent / "outside.wav"
    body = client.post("/api/v1/synthesize/sft", json={"text": "Hi.", "voice_id": "pretrained_voice_001"}).json()
    outside.write_bytes(download(client, body))
    yield voice["voice_id"], outside
    outside.unlink(missing_ok=True)
    delete_quietly(client, voice["voice_id"])


def traversal_targets(voice_id: str) -> list[str]:
    parquet = f"{voice_id}.parquet"
    return [
        f"/api/v1/audio/..%2Fvoices%2F{parquet}",
        f"/api/v1/audio/%2e%2e/voices/{parquet}",
        f"/api/v1/audio/%2e%2e%2fvoices%2f{parquet}",
        f"/api/v1/audio/..%5Cvoices%5C{parquet}",
        f"/api/v1/audio/../voices/{parquet}",
        "/api/v1/audio/..%2Foutside.wav",
        "/api/v1/audio/%2e%2e%2Foutside.wav",
        "/api/v1/audio/..%5Coutside.wav",
        "/api/v1/audio/../outside.wav",
        "/api/v1/audio/....%2F%2Foutside.wav",
        "/api/v1/audio/%252e%252e%252Foutside.wav",
        "/api/v1/audio/..",
        "/api/v1/audio/%2e%2e",
        "/api/v1/audio/%2Fetc%2Fpasswd",
        "/api/v1/audio//etc/passwd",
        "/api/v1/audio/outside.wav%00.wav",
    ]


def test_audio_names_cannot_leave_the_output_folder(serve_cluster, client, stores, planted) -> None:
    voice_id, outside = planted
    root = stores["audio"].parent
    before = snapshot(root)
    secret = outside.read_bytes()
    parquet = (stores["voices"] / f"{voice_id}.parquet").read_bytes()
    for target in traversal_targets(voice_id):
        status, headers, body = raw_get(serve_cluster["base_url"], target)
        assert 400 <= status < 500, (target, status)
        assert body != secret and body != parquet and not body.startswith(b"PAR1"), target
        assert headers["content-type"].startswith("application/json"), target
        error = json.loads(body)
        assert set(error) == {"error", "message", "details"} and "path" in error["details"], (target, error)
    assert snapshot(root) == before


def test_voice_ids_cannot_leave_the_voice_store(serve_cluster, client, stores, planted) -> None:
    voice_id, outside = planted
    root = stores["voices"].parent
    before, voices_before = snapshot(root), client.get("/api/v1/voices/stats/summary").json()
    targets = ["/api/v1/voices/..%2Fx", "/api/v1/voices/..%2F..%2Fx", "/api/v1/voices/a%2Fb", "/api/v1/voices/a/b",
               "/api/v1/voices/%2e%2e", "/api/v1/voices/..", f"/api/v1/voices/..%2Fvoices%2F{voice_id}",
               f"/api/v1/voices/{voice_id}%2F..", "/api/v1/voices/..%5Coutside", "/api/v1/voices/..%2Foutside.wav",
               f"/api/v1/voices/{voice_id}.parquet", "/api/v1/voices/%2Fetc%2Fpasswd"]
    for target in targets:
        for method in ("GET", "PUT", "DELETE"):
            kwargs = {"json": {"name": "hijacked"}} if method == "PUT" else {}
            response = client.request(method, target, **kwargs)
            assert 400 <= response.status_code < 500, (method, target, response.status_code)
            assert_error(response, response.status_code)
        status, _, _ = raw_get(serve_cluster["base_url"], target.replace("%2F", "/").replace("%2e", "."))
        assert 400 <= status < 500, target
    assert snapshot(root) == before
    assert client.get("/api/v1/voices/stats/summary").json() == voices_before
    assert client.get(f"/api/v1/voices/{voice_id}").json()["name"] != "hijacked"
    assert outside.exists()
