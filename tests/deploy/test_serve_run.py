"""`serve run serve_config.yaml` through the real CLI, and autoscaling observed under a burst."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.local import free_port

ROOT = Path(__file__).resolve().parents[2]
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
    # Its own cluster; token auth off so the `serve status` CLI below can read it without a token.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
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
        yield {"base_url": base_url, "dashboard": dashboard.group(0) if dashboard else None, "cli": serve_cli,
               "env": env, "status_log": work / "status.log"}
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
    response = httpx.post(f"{served['base_url']}/api/v1/synthesize/sft", timeout=120,
                          json={"text": "Hello, how are you today?", "voice_id": "pretrained_voice_001"})
    assert response.status_code == 200 and response.json()["duration"] > 0


def test_a_burst_scales_the_llm_up_and_back_down(served) -> None:
    assert served["dashboard"], "serve run printed no dashboard address"
    assert llm_replicas(served) == 1

    def stream_one(seed: int) -> None:
        body = {"text": BURST_TEXT, "voice_id": "pretrained_voice_001", "stream": True, "seed": seed}
        with httpx.stream("POST", f"{served['base_url']}/api/v1/synthesize/sft", json=body, timeout=300) as reply:
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
