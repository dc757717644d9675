"""Hostile and broken uploads and ids: oversized files, lying headers, archives posing as WAV,
ids that try to name paths. Each is a clean 4xx and leaves the registry and the stores as they were."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from tests.serve_app.http_helpers import (
    PROMPT_TEXT,
    assert_error,
    delete_quietly,
    register,
    unique_id,
    wav_bytes,
)
from tts_core.limits import MAX_UPLOAD_BYTES


@pytest.fixture(scope="module")
def data_root(serve_cluster) -> Path:
    return Path(serve_cluster["settings"]["voice_store_uri"]).parent


def registry_state(client) -> tuple[dict, dict]:
    return (client.get("/api/v1/voices/stats/summary").json(),
            client.get("/api/v1/voices/", params={"page_size": 100}).json())


def voice_files(data_root: Path) -> list[str]:
    return sorted(path.name for path in (data_root / "voices").iterdir())


def oversized_wav(padding: int = 51 * 1024 * 1024) -> bytes:
    """A valid 1 s WAV followed by padding: by default ~51 MB, over the 50 MB limit, whatever the audio says."""
    return wav_bytes(1.0) + bytes(padding)


def test_oversized_voice_upload(client, data_root) -> None:
    before, files = registry_state(client), voice_files(data_root)
    voice_id = unique_id("huge")
    # A body over the upload limit is refused before it is read (413); a file over 50 MB in a body
    # just under it is refused once read (400).
    response = register(client, voice_id, "sft", audio=oversized_wav())
    assert_error(response, 413, "payload_too_large", path="/api/v1/voices/")
    response = register(client, voice_id, "sft", audio=oversized_wav(MAX_UPLOAD_BYTES - 4096))
    assert_error(response, 400, "invalid_audio", path="/api/v1/voices/")
    assert_error(client.get(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found")
    assert registry_state(client) == before
    assert voice_files(data_root) == files


@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_oversized_prompt_audio(client, mode) -> None:
    response = client.post(f"/api/v1/synthesize/{mode}", data={"text": "Hello.", "prompt_text": PROMPT_TEXT},
                           files={"prompt_audio": ("big.wav", oversized_wav(), "audio/wav")})
    assert_error(response, 413, "payload_too_large", path=f"/api/v1/synthesize/{mode}")


def with_data_size(wav: bytes, data_size: int, riff_size: int | None = None) -> bytes:
    patched = bytearray(wav)
    patched[40:44] = struct.pack("<I", data_size)
    if riff_size is not None:
        patched[4:8] = struct.pack("<I", riff_size)
    return bytes(patched)


def test_wav_header_claiming_more_than_it_holds(client) -> None:
    """A header that promises ~2 GB of samples but holds 1 s: either refused, or taken for what is really
    there (never the claimed length, never a 5xx)."""
    voice_id = unique_id("liar")
    response = register(client, voice_id, "sft", audio=with_data_size(wav_bytes(1.0), 0x7FFFFFF0, 0x7FFFFFF8))
    try:
        if response.status_code == 201:
            assert response.json()["duration"] == pytest.approx(1.0, abs=1e-3)
        else:
            assert_error(response, 400, "invalid_audio")
    finally:
        delete_quietly(client, voice_id)


def test_wav_header_claiming_a_long_sample_with_no_data(client) -> None:
    """The header declares minutes of audio; the file stops after a few samples."""
    truncated = with_data_size(wav_bytes(1.0), 0x7FFFFFF0, 0x7FFFFFF8)[:100]
    response = register(client, unique_id("liar"), "sft", audio=truncated)
    assert_error(response, 400, "invalid_audio")


def test_wav_header_claiming_less_than_it_holds(client) -> None:
    """A data size of 0.1 s in a 2 s file: only what the header declares is audio, too short to use."""
    response = register(client, unique_id("liar"), "sft", audio=with_data_size(wav_bytes(2.0), 3200))
    assert_error(response, 400, "invalid_audio")


@pytest.mark.parametrize("rate", [0, 1, 0xFFFFFFFF])
def test_wav_header_with_absurd_sample_rate(client, rate) -> None:
    patched = bytearray(wav_bytes(1.0))
    patched[24:28] = struct.pack("<I", rate)
    response = register(client, unique_id("rate"), "sft", audio=bytes(patched))
    assert_error(response, 400, "invalid_audio")


def test_zip_renamed_wav(client) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("voice_sample.wav", wav_bytes(2.0))
    voice_id = unique_id("zip")
    response = register(client, voice_id, "sft", audio=buffer.getvalue(), filename="voice_sample.wav")
    assert_error(response, 400, "invalid_audio")
    assert_error(client.get(f"/api/v1/voices/{voice_id}"), 404, "voice_not_found")
    response = client.post("/api/v1/synthesize/cross-lingual", data={"text": "Hello."},
                           files={"prompt_audio": ("voice_sample.wav", buffer.getvalue(), "audio/wav")})
    assert_error(response, 400, "invalid_audio")


@pytest.mark.parametrize("payload", [b"\xff\xfb" + bytes(4000), b"fLaC" + bytes(4000), b"OggS" + bytes(4000),
                                     b"ID3\x04" + bytes(4000), b"\x00\x00\x00\x20ftypM4A " + bytes(4000)],
                         ids=["mp3-sync", "flac-magic", "ogg-magic", "id3", "m4a-magic"])
def test_magic_bytes_without_audio(client, payload) -> None:
    assert_error(register(client, unique_id("magic"), "sft", audio=payload), 400, "invalid_audio")


@pytest.mark.parametrize("voice_id", ["../x", "..%2F..", "a/b", "..", ".", "a\\b", "/etc/passwd", "x.parquet",
                                      "a b", "", "é", "a" * 65, "../../voices/evil"])
def test_path_like_voice_ids_are_refused(client, data_root, voice_id) -> None:
    before, files = registry_state(client), voice_files(data_root)
    outside = sorted(path.name for path in data_root.iterdir())
    response = register(client, voice_id, "sft")
    assert_error(response, 422, "validation_error", path="/api/v1/voices/")
    assert registry_state(client) == before
    assert voice_files(data_root) == files
    assert sorted(path.name for path in data_root.iterdir()) == outside
