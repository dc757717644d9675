"""The API usage guide's examples (the document the API was first specified from), replayed as
written: the curl commands verbatim (through a small curl-to-requests translator, so no curl binary
is needed) and the Python snippets with `requests`.

Only the host (`http://localhost:8000`) and the sample file (`@/path/to/voice_sample.wav`, a generated
WAV here) are substituted. The literal ids (`my_custom_voice`, `my_voice_001`) are used and deleted again.
"""

from __future__ import annotations

import io
import shlex
import time
from pathlib import Path

import pytest
import requests
import soundfile as sf

from tests.serve_app.http_helpers import MODEL_RATE, check_audio, speech_like

SEED_HOST = "http://localhost:8000"
SEED_SAMPLE = "/path/to/voice_sample.wav"

CURL_ADD_VOICE = '''curl -X POST "http://localhost:8000/api/v1/voices/" \\
-H "Content-Type: multipart/form-data" \\
-F "voice_id=my_custom_voice" \\
-F "name=My Custom Voice" \\
-F "description=A custom voice for testing" \\
-F "voice_type=zero_shot" \\
-F "language=en" \\
-F "prompt_text=Hello, this is a sample of my voice." \\
-F "audio_format=wav" \\
-F "audio_file=@/path/to/voice_sample.wav"'''
CURL_LIST = 'curl -X GET "http://localhost:8000/api/v1/voices/"'
CURL_LIST_FILTERED = ('curl -X GET '
                      '"http://localhost:8000/api/v1/voices/?voice_type=zero_shot&language=en&page=1&page_size=10"')
CURL_GET = 'curl -X GET "http://localhost:8000/api/v1/voices/my_custom_voice"'
CURL_PUT = '''curl -X PUT "http://localhost:8000/api/v1/voices/my_custom_voice" \\
-H "Content-Type: application/json" \\
-d '{
"name": "Updated Voice Name",
"description": "Updated description"
}\''''
CURL_DELETE = 'curl -X DELETE "http://localhost:8000/api/v1/voices/my_custom_voice"'
CURL_STATS = 'curl -X GET "http://localhost:8000/api/v1/voices/stats/summary"'
CURL_PRETRAINED = 'curl -X GET "http://localhost:8000/api/v1/voices/pretrained/list"'
CURL_SFT = '''curl -X POST "http://localhost:8000/api/v1/synthesize/sft" \\
-H "Content-Type: application/json" \\
-d '{
"text": "Hello, how are you today?",
"voice_id": "pretrained_voice_001",
"speed": 1.0,
"format": "wav",
"stream": false
}\''''
CURL_ZERO_SHOT_VOICE = '''curl -X POST "http://localhost:8000/api/v1/synthesize/zero-shot" \\
-H "Content-Type: multipart/form-data" \\
-F "text=Hello, this is a test of voice cloning." \\
-F "voice_id=my_custom_voice" \\
-F "speed=1.0" \\
-F "format=wav" \\
-F "stream=false"'''
CURL_ZERO_SHOT_AUDIO = '''curl -X POST "http://localhost:8000/api/v1/synthesize/zero-shot" \\
-H "Content-Type: multipart/form-data" \\
-F "text=Hello, this is a test of voice cloning." \\
-F "prompt_text=This is the original text from the audio sample." \\
-F "speed=1.0" \\
-F "format=wav" \\
-F "stream=false" \\
-F "prompt_audio=@/path/to/voice_sample.wav"'''
CURL_CROSS_LINGUAL = '''curl -X POST "http://localhost:8000/api/v1/synthesize/cross-lingual" \\
-H "Content-Type: multipart/form-data" \\
-F "text=你好,这是跨语言语音合成测试。" \\
-F "voice_id=my_custom_voice" \\
-F "speed=1.0" \\
-F "format=wav" \\
-F "stream=false"'''
CURL_INSTRUCT = '''curl -X POST "http://localhost:8000/api/v1/synthesize/instruct" \\
-H "Content-Type: application/json" \\
-d '{
"text": "Hello, how are you today?",
"voice_id": "pretrained_voice_001",
"instruct_text": "Please speak in a happy and energetic tone",
"speed": 1.0,
"format": "wav",
"stream": false
}\''''


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory) -> Path:
    """The usage guide's `voice_sample.wav`: a few seconds of speech-like audio."""
    path = tmp_path_factory.mktemp("seed") / "voice_sample.wav"
    sf.write(path, speech_like(3.0, 16000, seed=1), 16000, subtype="PCM_16")
    return path


@pytest.fixture
def curl(serve_cluster, sample_path):
    """Run one of the usage guide's curl commands: method, URL, -H, -F (fields and @files) and -d, as curl would."""

    def run(command: str) -> requests.Response:
        command = command.replace(SEED_HOST, serve_cluster["base_url"]).replace(SEED_SAMPLE, str(sample_path))
        args = shlex.split(command.replace("\\\n", " "))
        assert args.pop(0) == "curl"
        method, url, headers, fields, data = "GET", None, {}, [], None
        while args:
            arg = args.pop(0)
            if arg == "-X":
                method = args.pop(0)
            elif arg == "-H":
                key, value = args.pop(0).split(":", 1)
                headers[key.strip()] = value.strip()
            elif arg == "-F":
                key, value = args.pop(0).split("=", 1)
                fields.append((key, value))
            elif arg == "-d":
                data = args.pop(0)
            else:
                assert url is None, f"unexpected curl argument {arg!r}"
                url = arg
        if fields:
            # curl -F sends multipart/form-data with its own boundary, whatever -H said.
            headers.pop("Content-Type", None)
            files = [(key, (Path(value[1:]).name, Path(value[1:]).read_bytes()) if value.startswith("@")
                      else (None, value)) for key, value in fields]
            return requests.request(method, url, headers=headers, files=files, timeout=120)
        if data is not None:
            return requests.request(method, url, headers=headers, data=data.encode(), timeout=120)
        return requests.request(method, url, headers=headers, timeout=120)

    return run


def delete_seed_voices(base_url: str) -> None:
    for voice_id in ("my_custom_voice", "my_voice_001"):
        requests.delete(f"{base_url}/api/v1/voices/{voice_id}", timeout=60)


@pytest.fixture(autouse=True)
def clean_seed_ids(serve_cluster):
    delete_seed_voices(serve_cluster["base_url"])
    yield
    delete_seed_voices(serve_cluster["base_url"])


def check_sync_result(base_url: str, response: requests.Response, label: str) -> bytes:
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"] is True and result["message"].startswith(label)
    audio = requests.get(f"{base_url}{result['audio_url']}", timeout=60)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    check_audio(audio.content, "wav", result["duration"])
    return audio.content


def test_seed_voice_management_with_curl(curl, serve_cluster, sample_path) -> None:
    base_url = serve_cluster["base_url"]
    created = curl(CURL_ADD_VOICE)
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["voice_id"] == "my_custom_voice" and voice["name"] == "My Custom Voice"
    assert voice["description"] == "A custom voice for testing" and voice["voice_type"] == "zero_shot"
    assert voice["language"] == "en" and voice["prompt_text"] == "Hello, this is a sample of my voice."
    assert voice["audio_format"] == "wav" and voice["file_size"] == sample_path.stat().st_size
    assert voice["duration"] == pytest.approx(3.0, abs=1e-3) and voice["sample_rate"] == 16000

    listed = curl(CURL_LIST)
    assert listed.status_code == 200 and voice in listed.json()["voices"]
    filtered = curl(CURL_LIST_FILTERED)
    assert filtered.status_code == 200
    body = filtered.json()
    assert body["page"] == 1 and body["page_size"] == 10 and 1 <= len(body["voices"]) <= 10
    # Oldest first: the new voice is on this page unless other tests left ten older en zero-shot voices.
    assert voice["voice_id"] in [v["voice_id"] for v in body["voices"]] or body["total"] > 10
    assert all(v["voice_type"] == "zero_shot" and v["language"] == "en" for v in body["voices"])

    fetched = curl(CURL_GET)
    assert fetched.status_code == 200 and fetched.json() == voice
    updated = curl(CURL_PUT)
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "Updated Voice Name"
    assert updated.json()["description"] == "Updated description"

    stats = curl(CURL_STATS)
    assert stats.status_code == 200 and stats.json()["voice_types"]["zero_shot"] >= 1
    assert stats.json()["languages"]["en"] >= 1
    pretrained = curl(CURL_PRETRAINED)
    assert pretrained.status_code == 200 and "pretrained_voice_001" in pretrained.json()["pretrained_voices"]

    check_sync_result(base_url, curl(CURL_ZERO_SHOT_VOICE), "Zero-shot")
    check_sync_result(base_url, curl(CURL_CROSS_LINGUAL), "Cross-lingual")

    deleted = curl(CURL_DELETE)
    assert deleted.status_code == 200 and deleted.json()["voice_id"] == "my_custom_voice"
    assert curl(CURL_GET).status_code == 404


def test_seed_add_voice_python(serve_cluster, sample_path, monkeypatch) -> None:
    monkeypatch.chdir(sample_path.parent)
    # --- the usage guide's snippet, with its URL pointed at the test server ---
    url = f"{serve_cluster['base_url']}/api/v1/voices/"
    with open("voice_sample.wav", "rb") as audio_file:
        files = {"audio_file": audio_file}
        data = {
            "voice_id": "my_custom_voice",
            "name": "My Custom Voice",
            "description": "A custom voice for testing",
            "voice_type": "zero_shot",
            "language": "en",
            "prompt_text": "Hello, this is a sample of my voice.",
            "audio_format": "wav"
        }
        response = requests.post(url, files=files, data=data)
        print(response.json())
    # ---
    assert response.status_code == 201
    assert response.json()["voice_id"] == "my_custom_voice"


def test_seed_sft_curl(curl, serve_cluster) -> None:
    check_sync_result(serve_cluster["base_url"], curl(CURL_SFT), "SFT")


def test_seed_sft_python(serve_cluster, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # --- the usage guide's snippet, with its URLs pointed at the test server ---
    url = f"{serve_cluster['base_url']}/api/v1/synthesize/sft"
    data = {
        "text": "Hello, how are you today?",
        "voice_id": "pretrained_voice_001",
        "speed": 1.0,
        "format": "wav",
        "stream": False
    }
    response = requests.post(url, json=data)
    result = response.json()
    if result["success"]:
        # Download the audio file
        audio_url = f"{serve_cluster['base_url']}{result['audio_url']}"
        audio_response = requests.get(audio_url)
        with open("output.wav", "wb") as f:
            f.write(audio_response.content)
        print(f"Audio saved to output.wav (duration: {result['duration']}s)")
    # ---
    assert response.status_code == 200
    check_audio((tmp_path / "output.wav").read_bytes(), "wav", result["duration"])


def test_seed_zero_shot_with_prompt_audio_curl(curl, serve_cluster) -> None:
    check_sync_result(serve_cluster["base_url"], curl(CURL_ZERO_SHOT_AUDIO), "Zero-shot")


def test_seed_instruct_curl(curl, serve_cluster) -> None:
    check_sync_result(serve_cluster["base_url"], curl(CURL_INSTRUCT), "Instruct")


def test_seed_complete_workflow(serve_cluster, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "my_voice_sample.wav", speech_like(3.0, 22050, f0=120.0, seed=2), 22050, subtype="PCM_16")
    BASE_URL = serve_cluster["base_url"]  # noqa: N806 - the usage guide's name

    # --- the usage guide's workflow, verbatim apart from BASE_URL ---
    def add_voice():
        """Add a custom voice to the cache"""
        url = f"{BASE_URL}/api/v1/voices/"
        with open("my_voice_sample.wav", "rb") as audio_file:
            files = {"audio_file": audio_file}
            data = {
                "voice_id": "my_voice_001",
                "name": "My Voice",
                "description": "My personal voice for cloning",
                "voice_type": "zero_shot",
                "language": "en",
                "prompt_text": "Hello, this is my voice sample.",
                "audio_format": "wav"
            }
            response = requests.post(url, files=files, data=data)
            if response.status_code == 201:
                print("Voice added successfully!")
                return True
            else:
                print(f"Failed to add voice: {response.text}")
                return False

    def synthesize_speech(text, voice_id):
        """Synthesize speech using the cached voice"""
        url = f"{BASE_URL}/api/v1/synthesize/zero-shot"
        data = {
            "text": text,
            "voice_id": voice_id,
            "speed": 1.0,
            "format": "wav",
            "stream": False
        }
        response = requests.post(url, data=data)
        if response.status_code == 200:
            result = response.json()
            if result["success"]:
                # Download the audio
                audio_url = f"{BASE_URL}{result['audio_url']}"
                audio_response = requests.get(audio_url)
                filename = f"synthesized_{int(time.time())}.wav"
                with open(filename, "wb") as f:
                    f.write(audio_response.content)
                print(f"Speech synthesized successfully: {filename}")
                print(f"Duration: {result['duration']}s")
                return filename
            else:
                print(f"Synthesis failed: {result['message']}")
        else:
            print(f"Request failed: {response.text}")
        return None

    def main():
        # Step 1: Add a voice (make sure you have my_voice_sample.wav)
        if add_voice():
            # Step 2: Synthesize speech
            text = "Hello! This is a test of voice cloning using CosyVoice2 API."
            return synthesize_speech(text, "my_voice_001")
    # ---

    filename = main()
    output = capsys.readouterr().out
    assert "Voice added successfully!" in output
    assert filename is not None, output
    assert f"Speech synthesized successfully: {filename}" in output
    duration = float(output.split("Duration: ")[1].split("s\n")[0])
    data = (tmp_path / filename).read_bytes()
    check_audio(data, "wav", duration)
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == MODEL_RATE and info.channels == 1


def test_seed_error_example(serve_cluster) -> None:
    response = requests.get(f"{serve_cluster['base_url']}/api/v1/voices/non_existent", timeout=60)
    assert response.status_code == 404
    body = response.json()
    # The example's body, plus the id of the request (the server log's key to it).
    assert body["details"].pop("request_id") == response.headers["x-request-id"]
    assert body == {"error": "voice_not_found", "message": "Voice with ID 'non_existent' not found",
                    "details": {"path": "/api/v1/voices/non_existent"}}
