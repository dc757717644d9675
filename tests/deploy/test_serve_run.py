"""`serve run serve_config.yaml` through the real CLI with Ray's token authentication on, `serve status`
reading it the way the README says, API keys required end to end, and autoscaling observed under a burst."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from serve_app.local import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-serve-run-test"
KEY_HEADER = {"Authorization": f"Bearer {API_KEY}"}
BURST_TEXT = " ".join(["This sentence is one of many that together make a long text for the model to read."] * 8)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """serve_config.yaml, pointed at the tiny twin and temp storage, with short autoscaling delays
    on the LLM, run by `serve run` in its own Ray cluster."""
    work = tmp_path_factory.mktemp("serve_run")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"].update(host="127.0.0.1", port=port)
    [app] = config["applications"]
    app["args"].update(model_dir=str(tiny_model_dir), voice_store_uri=str(work / "voices"),
                       output_store_uri=str(work / "audio"), task_store_uri=str(work / "tasks"))
    [llm] = [deployment for deployment in app["deployments"] if deployment["name"] == "SpeechTokenLLM"]
    llm["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
                                 "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                                 "look_back_period_s": 2}
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))

    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent)) or "serve"
    # Its own cluster, with Ray's default: token authentication on. The token lives in a file of this
    # test (RAY_AUTH_TOKEN_PATH) rather than the user's ~/.ray/auth_token, which is the only difference
    # from what the README says to type.
    token_file = work / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    env["COSYVOICE_API_KEY_HASHES"] = hashlib.sha256(API_KEY.encode()).hexdigest()
    log = (work / "serve.log").open("w")
    process = subprocess.Popen([serve_cli, "run", "--address", "local", str(config_path)], cwd=work, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("serve run did not become healthy:\n" + (work / "serve.log").read_text()[-3000:])
        dashboard = re.search(r"http://(?:127\.0\.0\.1|localhost|[\d.]+):\d+", dashboard_line(work / "serve.log"))
        # The CLI sends the token only in token mode: `RAY_AUTH_MODE=token serve status` (`make status`).
        yield {"base_url": base_url, "dashboard": dashboard.group(0) if dashboard else None, "cli": serve_cli,
               "env": {**env, "RAY_AUTH_MODE": "token"}, "env_without_token": env, "status_log": work / "status.log"}
    finally:
        os.killpg(process.pid, signal.SIGINT)  # serve run shuts the app and its Ray down on Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def dashboard_line(log: Path) -> str:
    for line in log.read_text().splitlines():
        if "dashboard at" in line.lower():
            return line
    return ""


def llm_replicas(served: dict) -> int:
    """LLM replicas the controller is running or starting (what autoscaling decided)."""
    result = subprocess.run([served["cli"], "status", "--address", served["dashboard"]], capture_output=True,
                            text=True, timeout=60, env=served["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout
    deployment = yaml.safe_load(output)["applications"]["cosyvoice"]["deployments"]["SpeechTokenLLM"]
    assert "replica_states" in deployment, output
    with open(served["status_log"], "a") as log:
        log.write(output + "\n---\n")
    return sum(int(deployment["replica_states"].get(state, 0)) for state in ("STARTING", "RUNNING", "UPDATING"))


def test_serve_run_serves_the_api(served) -> None:
    health = httpx.get(f"{served['base_url']}/health", timeout=30).json()
    assert health["status"] == "healthy" and all(health["stages"].values())
    body = {"text": "Hello, how are you today?", "voice_id": "pretrained_voice_001"}
    refused = httpx.post(f"{served['base_url']}/api/v1/synthesize/sft", timeout=120, json=body)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    response = httpx.post(f"{served['base_url']}/api/v1/synthesize/sft", timeout=120, json=body, headers=KEY_HEADER)
    assert response.status_code == 200 and response.json()["duration"] > 0
    # An OpenAI client with the key, and one with a wrong key.
    with openai.OpenAI(base_url=served["base_url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
        assert client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.").content.startswith(b"ID3")
    with openai.OpenAI(base_url=served["base_url"] + "/v1", api_key="sk-wrong", max_retries=0, timeout=60) as client:
        with pytest.raises(openai.AuthenticationError) as refused_client:
            client.models.list()
    assert refused_client.value.code == "invalid_api_key"


def test_serve_status_needs_the_token(served) -> None:
    """Authentication is on: the CLI without token mode is refused, with it (what the README says) it
    reads the application's status."""
    refused = subprocess.run([served["cli"], "status", "--address", served["dashboard"]], capture_output=True,
                             text=True, timeout=60, env=served["env_without_token"])
    assert refused.returncode != 0 and "AuthenticationError" in refused.stderr, refused.stderr[-2000:]
    status = subprocess.run([served["cli"], "status", "--address", served["dashboard"]], capture_output=True,
                            text=True, timeout=60, env=served["env"])
    assert status.returncode == 0, status.stderr[-2000:]
    assert yaml.safe_load(status.stdout)["applications"]["cosyvoice"]["status"] == "RUNNING"


def test_a_burst_scales_the_llm_up_and_back_down(served) -> None:
    assert served["dashboard"], "serve run printed no dashboard address"
    assert llm_replicas(served) == 1

    def stream_one(seed: int) -> None:
        body = {"text": BURST_TEXT, "voice_id": "pretrained_voice_001", "stream": True, "seed": seed}
        with httpx.stream("POST", f"{served['base_url']}/api/v1/synthesize/sft", json=body, timeout=300,
                          headers=KEY_HEADER) as reply:
            for _ in reply.iter_raw():
                pass

    peak, deadline = 1, time.monotonic() + 120
    while peak < 2 and time.monotonic() < deadline:  # bounded: a few bursts at most
        burst = [threading.Thread(target=stream_one, args=(seed,)) for seed in range(8)]
        for thread in burst:
            thread.start()
        while any(thread.is_alive() for thread in burst):
            peak = max(peak, llm_replicas(served))
            time.sleep(1)
    assert peak == 2, "the LLM never scaled above its minimum"

    deadline = time.monotonic() + 120
    while llm_replicas(served) > 1 and time.monotonic() < deadline:
        time.sleep(2)
    assert llm_replicas(served) == 1
