"""Synchronous synthesis over HTTP: the four modes and their body kinds, output formats checked
byte by byte, speed, and every error the contract names for these routes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.audio_samples import decode_output
from tests.serve_app.http_helpers import (
    MODEL_RATE,
    PROMPT_TEXT,
    SHORT_TEXT,
    assert_error,
    assert_synthesis_result,
    check_audio,
    download,
    unique_id,
    wav_bytes,
)
from tts_core.stream_encoding import encode_file

LABELS = {"sft": "SFT", "zero-shot": "Zero-shot", "cross-lingual": "Cross-lingual", "instruct": "Instruct"}
INSTRUCTION = "Please speak in a happy and energetic tone"
MP3_AVAILABLE = "MP3" in sf.available_formats()


def json_body(mode: str, voice_id: str, **fields) -> dict:
    body = {"text": SHORT_TEXT, "voice_id": voice_id, **fields}
    if mode == "instruct":
        body.setdefault("instruct_text", INSTRUCTION)
    return body


def synthesize(client, mode: str, voice_id: str = "pretrained_voice_001", encoding: str = "multipart",
               prompt_audio: bytes | None = None, **fields):
    """One sync synthesis request in the body kind the mode takes (forms as multipart or urlencoded)."""
    path = f"/api/v1/synthesize/{mode}"
    if mode in ("sft", "instruct"):
        return client.post(path, json=json_body(mode, voice_id, **fields))
    data = {"text": SHORT_TEXT, **({"voice_id": voice_id} if voice_id else {}), **fields}
    data = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in data.items()}
    if prompt_audio is not None:
        return client.post(path, data=data, files={"prompt_audio": ("prompt.wav", prompt_audio, "audio/wav")})
    if encoding == "multipart":  # fields only, as `curl -F` sends them
        return client.post(path, files={key: (None, value) for key, value in data.items()})
    response = client.post(path, data=data)
    assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    return response


@pytest.fixture(scope="module")
def voice_id(zero_shot_voice) -> str:
    return zero_shot_voice["voice_id"]


# --- success ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sft", "instruct"])
@pytest.mark.parametrize("voice", ["pretrained", "registered"])
def test_json_modes(client, voice_id, mode, voice) -> None:
    response = synthesize(client, mode, "pretrained_voice_002" if voice == "pretrained" else voice_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert_synthesis_result(body, "wav", LABELS[mode])
    check_audio(download(client, body), "wav", body["duration"])


@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_form_modes_with_registered_voice(client, voice_id, mode, encoding) -> None:
    response = synthesize(client, mode, voice_id, encoding, speed=1.0, format="wav", stream=False)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_synthesis_result(body, "wav", LABELS[mode])
    check_audio(download(client, body), "wav", body["duration"])


@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_form_modes_with_prompt_audio(client, mode) -> None:
    response = synthesize(client, mode, None, prompt_audio=wav_bytes(2.0, 22050), prompt_text=PROMPT_TEXT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_synthesis_result(body, "wav", LABELS[mode])
    check_audio(download(client, body), "wav", body["duration"])


def test_cross_lingual_ignores_prompt_text(client) -> None:
    """Cross-lingual needs no transcript, and a given one changes nothing."""
    audio = wav_bytes(2.0)
    without = synthesize(client, "cross-lingual", None, prompt_audio=audio, seed=7)
    with_text = synthesize(client, "cross-lingual", None, prompt_audio=audio, seed=7, prompt_text="Ignored words.")
    assert without.status_code == with_text.status_code == 200
    assert download(client, without.json()) == download(client, with_text.json())


def test_registered_voice_works_in_every_mode(client) -> None:
    """voice_type only labels intended use: an sft-labelled registered voice serves all four modes."""
    from tests.serve_app.http_helpers import create_voice, delete_quietly

    voice = create_voice(client, voice_type="sft")
    try:
        for mode in LABELS:
            response = synthesize(client, mode, voice["voice_id"])
            assert response.status_code == 200, (mode, response.text)
    finally:
        delete_quietly(client, voice["voice_id"])


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
@pytest.mark.parametrize("mode", ["sft", "zero-shot"])
def test_output_formats_are_real(client, voice_id, mode, fmt) -> None:
    response = synthesize(client, mode, voice_id if mode == "zero-shot" else "pretrained_voice_001", format=fmt)
    if fmt == "mp3" and not MP3_AVAILABLE:
        assert_error(response, 400, "unsupported_format")
        return
    assert response.status_code == 200, response.text
    body = response.json()
    assert_synthesis_result(body, fmt)
    data = download(client, body)
    check_audio(data, fmt, body["duration"])
    assert download(client, body) == data  # downloadable again, same bytes


def test_chinese_text(client, voice_id) -> None:
    response = synthesize(client, "cross-lingual", voice_id, text="你好,这是跨语言语音合成测试。")
    assert response.status_code == 200, response.text
    body = response.json()
    check_audio(download(client, body), "wav", body["duration"])


def test_speed_scales_duration(client) -> None:
    durations = {}
    for speed in (0.5, 1.0, 2.0):
        response = synthesize(client, "sft", text="Hello there, how are you?", speed=speed, seed=5)
        assert response.status_code == 200, response.text
        body = response.json()
        check_audio(download(client, body), "wav", body["duration"])
        durations[speed] = body["duration"]
    assert durations[0.5] > durations[1.0] > durations[2.0]
    assert durations[0.5] / durations[2.0] == pytest.approx(4.0, rel=0.1)


def test_same_seed_same_audio(client, voice_id) -> None:
    first = synthesize(client, "zero-shot", voice_id, seed=42).json()
    second = synthesize(client, "zero-shot", voice_id, seed=42).json()
    assert first["audio_url"] != second["audio_url"]
    assert download(client, first) == download(client, second)


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1"])
def test_form_boolean_true_spellings_stream(client, voice_id, value) -> None:
    response = synthesize(client, "zero-shot", voice_id, "urlencoded", stream=value)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.content[:4] == b"RIFF"


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0"])
def test_form_boolean_false_spellings_do_not_stream(client, voice_id, value) -> None:
    response = synthesize(client, "cross-lingual", voice_id, "multipart", stream=value)
    assert response.status_code == 200, response.text
    assert_synthesis_result(response.json(), "wav")


# --- 404 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(LABELS))
def test_unknown_voice_is_404(client, mode) -> None:
    voice_id = unique_id("ghost")
    response = synthesize(client, mode, voice_id)
    assert_error(response, 404, "voice_not_found", path=f"/api/v1/synthesize/{mode}",
                 message=f"Voice with ID '{voice_id}' not found")


def test_zero_shot_unknown_voice_urlencoded_is_404(client) -> None:
    response = synthesize(client, "zero-shot", "non_existent", "urlencoded")
    assert_error(response, 404, "voice_not_found", message="Voice with ID 'non_existent' not found")


# --- 400 invalid_request ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   \n\t  "])
@pytest.mark.parametrize("mode", list(LABELS))
def test_blank_text_is_400(client, voice_id, mode, text) -> None:
    response = synthesize(client, mode, "pretrained_voice_001" if mode in ("sft", "instruct") else voice_id,
                          text=text)
    assert_error(response, 400, "invalid_request", path=f"/api/v1/synthesize/{mode}")


@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_both_voice_sources_is_400(client, voice_id, mode) -> None:
    response = synthesize(client, mode, voice_id, prompt_audio=wav_bytes(), prompt_text=PROMPT_TEXT)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_no_voice_source_is_400(client, mode, encoding) -> None:
    response = synthesize(client, mode, None, encoding, prompt_text=PROMPT_TEXT)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("prompt_text", [None, "", "  "])
def test_zero_shot_prompt_audio_needs_prompt_text(client, prompt_text) -> None:
    fields = {} if prompt_text is None else {"prompt_text": prompt_text}
    response = synthesize(client, "zero-shot", None, prompt_audio=wav_bytes(), **fields)
    assert_error(response, 400, "invalid_request", path="/api/v1/synthesize/zero-shot")


# --- 400 invalid_audio -----------------------------------------------------------------------------


@pytest.mark.parametrize("audio", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"\x00" * 5000], ids=["empty", "header",
                                                                                                "zeros"])
@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_bad_prompt_audio_is_400(client, mode, audio) -> None:
    response = synthesize(client, mode, None, prompt_audio=audio, prompt_text=PROMPT_TEXT)
    if audio == b"":
        # An empty upload may also be read as no upload at all (no voice source): still a 400.
        assert_error(response, 400)
        assert response.json()["error"] in ("invalid_audio", "invalid_request")
    else:
        assert_error(response, 400, "invalid_audio")


@pytest.mark.parametrize("seconds", [0.2, 31.0])
def test_prompt_audio_length_limits(client, seconds) -> None:
    response = synthesize(client, "cross-lingual", None, prompt_audio=wav_bytes(seconds, 8000))
    assert_error(response, 400, "invalid_audio")


# --- formats the libsndfile path does not write ------------------------------------------------


@pytest.mark.parametrize("fmt", ["opus", "aac", "pcm"])
def test_stream_formats_as_files(client, fmt) -> None:
    """Opus (Ogg), AAC (ADTS) and raw PCM files are the seed's audio encoded whole, with its duration."""
    body = synthesize(client, "sft", format=fmt, seed=7).json()
    assert_synthesis_result(body, fmt)
    exact = decode_output(download(client, synthesize(client, "sft", format="pcm", seed=7).json()), "pcm")
    assert download(client, body) == encode_file(exact, MODEL_RATE, fmt)
    assert body["duration"] == round(len(exact) / MODEL_RATE, 3)


# --- 422 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "bad"), [
    ({"format": "ogg"}, "format"),
    ({"format": "WAVE"}, "format"),
    ({"speed": 0.49}, "speed"),
    ({"speed": 2.01}, "speed"),
    ({"speed": 0}, "speed"),
    ({"speed": "fast"}, "speed"),
    ({"text": "a" * 1001}, "text"),
    ({"stream": "maybe"}, "stream"),
])
@pytest.mark.parametrize("mode", list(LABELS))
def test_invalid_field_is_422(client, voice_id, mode, fields, bad) -> None:
    response = synthesize(client, mode, "pretrained_voice_001" if mode in ("sft", "instruct") else voice_id,
                          **fields)
    body = assert_error(response, 422, "validation_error", path=f"/api/v1/synthesize/{mode}")
    assert any(error["loc"][-1] == bad for error in body["details"]["errors"]), body


@pytest.mark.parametrize("mode", list(LABELS))
def test_longest_text_passes_validation(client, mode) -> None:
    """1000 characters are allowed: the request gets past validation (to the unknown voice)."""
    response = synthesize(client, mode, "no_such_voice_here", text="a" * 1000)
    assert_error(response, 404, "voice_not_found")


@pytest.mark.parametrize(("mode", "drop"), [("sft", "text"), ("sft", "voice_id"), ("instruct", "instruct_text"),
                                            ("instruct", "voice_id"), ("instruct", "text")])
def test_json_missing_field_is_422(client, mode, drop) -> None:
    body = json_body(mode, "pretrained_voice_001")
    del body[drop]
    response = client.post(f"/api/v1/synthesize/{mode}", json=body)
    errors = assert_error(response, 422, "validation_error")["details"]["errors"]
    assert any(error["loc"][-1] == drop for error in errors)


@pytest.mark.parametrize("mode", ["zero-shot", "cross-lingual"])
def test_form_missing_text_is_422(client, voice_id, mode) -> None:
    response = client.post(f"/api/v1/synthesize/{mode}", data={"voice_id": voice_id})
    errors = assert_error(response, 422, "validation_error")["details"]["errors"]
    assert any(error["loc"][-1] == "text" for error in errors)


@pytest.mark.parametrize("instruct_text", ["", "x" * 501, None, 5])
def test_instruct_text_limits_are_422(client, instruct_text) -> None:
    response = synthesize(client, "instruct", instruct_text=instruct_text)
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("mode", ["sft", "instruct"])
@pytest.mark.parametrize("payload", [b"{not json", b"[]", b"null", b'"text"'])
def test_json_modes_reject_non_objects(client, mode, payload) -> None:
    response = client.post(f"/api/v1/synthesize/{mode}", content=payload, headers={"content-type": "application/json"})
    assert_error(response, 422, "validation_error")


def test_json_mode_rejects_form_body(client) -> None:
    response = client.post("/api/v1/synthesize/sft", data={"text": "Hi", "voice_id": "pretrained_voice_001"})
    assert_error(response, 422, "validation_error")


def test_wav_output_decodes_to_same_samples_as_flac(client) -> None:
    """The same seed gives the same audio whatever the container (flac is lossless; the two 16-bit
    conversions may round differently by a step)."""
    wav = synthesize(client, "sft", format="wav", seed=9).json()
    flac = synthesize(client, "sft", format="flac", seed=9).json()
    assert wav["duration"] == flac["duration"]
    wav_samples, _ = sf.read(io.BytesIO(download(client, wav)), dtype="int16")
    flac_samples, _ = sf.read(io.BytesIO(download(client, flac)), dtype="int16")
    assert wav_samples.shape == flac_samples.shape
    assert np.abs(wav_samples.astype(np.int32) - flac_samples).max() <= 2


@pytest.mark.parametrize("mode", ["sft", "instruct"])
def test_empty_voice_id_is_an_unknown_voice(client, mode) -> None:
    response = synthesize(client, mode, "")
    assert_error(response, 404, "voice_not_found", message="Voice with ID '' not found")
