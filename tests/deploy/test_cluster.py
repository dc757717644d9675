"""The service on a real three-node Ray cluster, deployed with `serve deploy`, stores on S3.

Nodes and the stages pinned to them are in tests/deploy/cluster_config.yaml. Shown here: replicas
run where the config puts them; requests succeed across nodes; the LLM scales onto the second
worker under a burst and back; every streamed chunk reaches the flow replica holding its stream's
state; and a worker node killed while requests run (its raylet, by PID) costs what the client sees
here, the service is whole again once a replacement node joins, and no voice or finished task is
lost while every async task ends (the lost node's replicas move to a spare node).

Three Ray nodes and the deployment alone take minutes on a two-core machine, so the module is
marked `cluster` and runs with `make test-cluster`, not in `make test`. Figures go to stdout (`-s`)
and to `cluster-report.json` in the test's temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve_app.local import free_port
from tests.deploy.ray_cluster import LocalRayCluster
from tests.deploy.test_serve_run import BURST_TEXT
from tests.serve_app.http_helpers import PROMPT_TEXT, download, unique_id, wav_bytes

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
APP = "cosyvoice"
HEAD, WORKER_A, WORKER_B, SPARE = "head", "worker-a", "worker-b", "worker-spare"
NODE_RESOURCES = {HEAD: {"edge": 1}, WORKER_A: {"frontend": 1, "llm": 1, "flow": 1, "vocoder": 1},
                  WORKER_B: {"llm": 1, "flow": 1, "vocoder": 1}}
#: Where cluster_config.yaml allows each stage (every replica must be on one of these).
ALLOWED = {"ApiIngress": {HEAD}, "SynthesisPipeline": {HEAD}, "TextFrontendDeployment": {WORKER_A},
           "SpeechTokenLLM": {WORKER_A, WORKER_B}, "FlowDecoder": {WORKER_A, WORKER_B},
           "Vocoder": {WORKER_A, WORKER_B}}
TARGET_REPLICAS = {"ApiIngress": 1, "SynthesisPipeline": 1, "TextFrontendDeployment": 1, "SpeechTokenLLM": 1,
                   "FlowDecoder": 2, "Vocoder": 1}
TASK_TEXT = "This sentence is one of a few that together make a text long enough to be streamed in chunks."
#: Calls the flow replicas' stats in a Ray driver of its own (this process may be another cluster's driver).
FLOW_STATS = """
import json, sys
import ray
from benchmarks.affinity import replica_stats
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps(replica_stats(int(sys.argv[2]))))
"""


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path, s3, tmp_path_factory: pytest.TempPathFactory):
    """Three Ray nodes on loopback and the app deployed on them by `serve deploy`, healthy."""
    work = tmp_path_factory.mktemp("cluster")
    ray_cluster = LocalRayCluster(work, dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))))
    config = yaml.safe_load((Path(__file__).parent / "cluster_config.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"].update(
        model_dir=str(tiny_model_dir), voice_store_uri=s3.uri("cluster-voices"),
        task_store_uri=s3.uri("cluster-tasks"), output_store_uri=s3.uri("cluster-audio"))
    config_path = work / "cluster_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report: dict[str, Any] = {}
    try:
        started = time.monotonic()
        ray_cluster.start_node(HEAD, NODE_RESOURCES[HEAD], num_cpus=1, head=True)
        for name in (WORKER_A, WORKER_B):
            ray_cluster.start_node(name, NODE_RESOURCES[name], num_cpus=2)
        report["cluster_start_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        ray_cluster.cli("serve", "deploy", str(config_path), "--address", ray_cluster.dashboard)
        base_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(base_url) and whole(ray_cluster), 600, "the app never became healthy")
        report["deploy_s"] = round(time.monotonic() - started, 1)
        yield {"cluster": ray_cluster, "base_url": base_url, "report": report, "work": work}
    finally:
        (work / "cluster-report.json").write_text(json.dumps(report, indent=1))
        print("\ncluster report:", json.dumps(report, indent=1))
        ray_cluster.stop()


def wait_until(condition: Any, timeout_s: float, message: str, period_s: float = 1.0) -> float:
    """Poll `condition` until true; the seconds it took (AssertionError with `message` past the timeout)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, message
        time.sleep(period_s)
    return time.monotonic() - started


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def running(cluster: LocalRayCluster, states: tuple[str, ...] = ("RUNNING",)) -> dict[str, list[str]]:
    """Deployment -> names of the nodes of its replicas in `states` ("pending" for one not placed yet)."""
    try:
        deployments = cluster.deployments(APP)
    except httpx.HTTPError:
        return {}
    return {name: sorted(cluster.node_name(replica["node_id"]) if replica.get("node_id") else "pending"
                         for replica in deployment["replicas"] if replica["state"] in states)
            for name, deployment in deployments.items()}


def whole(cluster: LocalRayCluster) -> bool:
    """Every deployment has at least its target of running replicas."""
    nodes = running(cluster)
    return all(len(nodes.get(name, [])) >= count for name, count in TARGET_REPLICAS.items())


def flow_stats(cluster: LocalRayCluster, replicas: int) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-c", FLOW_STATS, cluster.address, str(replicas)], env=cluster.env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def synthesize(base_url: str, stream: bool, text: str = "Hello, how are you today?", seed: int = 0,
               voice_id: str = "pretrained_voice_001") -> int:
    """One sft request; the bytes of audio received (a stream cut short raises)."""
    body = {"text": text, "voice_id": voice_id, "stream": stream, "seed": seed}
    with httpx.Client(base_url=base_url, timeout=300) as client:
        if not stream:
            response = client.post("/api/v1/synthesize/sft", json=body)
            assert response.status_code == 200, response.text
            return len(download(client, response.json()))
        with client.stream("POST", "/api/v1/synthesize/sft", json=body) as response:
            assert response.status_code == 200, response.read()
            return sum(len(piece) for piece in response.iter_raw())


def register_voice(base_url: str) -> str:
    voice_id = unique_id("cluster")
    with httpx.Client(base_url=base_url, timeout=120) as client:
        response = client.post("/api/v1/voices/", files={"audio_file": ("v.wav", wav_bytes(2.0), "audio/wav")},
                               data={"voice_id": voice_id, "name": "Before", "voice_type": "zero_shot",
                                     "prompt_text": PROMPT_TEXT})
    assert response.status_code == 201, response.text
    return voice_id


def speak_with(base_url: str, voice_id: str) -> float:
    response = httpx.post(f"{base_url}/api/v1/synthesize/zero-shot", timeout=300,
                          data={"text": "Hello there.", "voice_id": voice_id, "seed": "3"})
    assert response.status_code == 200, response.text
    return response.json()["duration"]


def completed_task(client: httpx.Client) -> dict[str, Any]:
    """Submit an async sft task and wait for it; its result."""
    task = client.post("/api/v1/async/synthesize/sft", json={"text": TASK_TEXT, "voice_id": "pretrained_voice_001"})
    assert task.status_code == 202, task.text
    task_id = task.json()["task_id"]
    wait_until(lambda: client.get(f"/api/v1/async/tasks/{task_id}/status").json()["status"] == "completed", 180,
               "the async task did not complete")
    return client.get(f"/api/v1/async/tasks/{task_id}/result").json()


def test_replicas_run_on_the_nodes_the_config_pins_them_to(cluster) -> None:
    nodes = running(cluster["cluster"])
    cluster["report"]["placement"] = nodes
    assert {name: len(nodes.get(name, [])) for name in TARGET_REPLICAS} == TARGET_REPLICAS
    for name, allowed in ALLOWED.items():
        assert set(nodes[name]) <= allowed, (name, nodes[name])
    assert sorted(nodes["FlowDecoder"]) == [WORKER_A, WORKER_B]  # one `flow` unit per worker


def test_requests_succeed_across_nodes(cluster) -> None:
    base_url = cluster["base_url"]
    assert synthesize(base_url, stream=False) > 44 and synthesize(base_url, stream=True) > 44
    voice_id = register_voice(base_url)
    assert speak_with(base_url, voice_id) > 0
    with httpx.Client(base_url=base_url, timeout=120) as client:
        assert len(download(client, completed_task(client))) > 44


def test_llm_scales_onto_the_second_worker_and_back_while_streams_keep_their_flow_replica(cluster) -> None:
    ray_cluster, report = cluster["cluster"], cluster["report"]
    before = {stats["replica"]: stats["chunks"] for stats in flow_stats(ray_cluster, 2)}
    peak: list[str] = running(ray_cluster)["SpeechTokenLLM"]
    timeline, started = [], time.monotonic()
    while len(peak) < 2 and time.monotonic() < started + 240:  # bounded: a few bursts at most
        burst = [threading.Thread(target=synthesize, args=(cluster["base_url"], True, BURST_TEXT, seed))
                 for seed in range(8)]
        for thread in burst:
            thread.start()
        while any(thread.is_alive() for thread in burst):
            # What the autoscaler decided: a replica counts from its start, wherever it was placed.
            nodes = running(ray_cluster, ("STARTING", "UPDATING", "RUNNING"))["SpeechTokenLLM"]
            peak = nodes if len(set(nodes) - {"pending"}) > len(set(peak) - {"pending"}) else peak
            llm = ray_cluster.deployments(APP)["SpeechTokenLLM"]
            timeline.append([round(time.monotonic() - started), llm["target_num_replicas"], llm["message"][:120],
                             [(replica["state"], ray_cluster.node_name(replica["node_id"] or "-"))
                              for replica in llm["replicas"]]])
            time.sleep(2)
        for thread in burst:
            thread.join()
    report["llm_nodes_at_peak"], report["llm_timeline"] = peak, timeline[::5]
    assert sorted(peak) == [WORKER_A, WORKER_B]
    report["llm_scale_down_s"] = round(wait_until(lambda: len(running(ray_cluster)["SpeechTokenLLM"]) == 1, 240,
                                                  "the LLM did not scale back down"), 1)

    after = flow_stats(ray_cluster, 2)
    chunks = {kind: sum(stats["chunks"].get(kind, 0) - before.get(stats["replica"], {}).get(kind, 0)
                        for stats in after) for kind in ("first", "cached", "from_start")}
    report["flow_streamed_chunks_in_burst"] = chunks
    assert chunks["cached"] > 0 and chunks["from_start"] == 0, chunks


def test_losing_a_worker_node_while_requests_run(cluster) -> None:
    ray_cluster, base_url, report = cluster["cluster"], cluster["base_url"], cluster["report"]
    voice_id = register_voice(base_url)
    with httpx.Client(base_url=base_url, timeout=120) as client:
        done = completed_task(client)
        audio = download(client, done)
    report["lost_node_ran"] = {name: nodes.count(WORKER_B) for name, nodes in running(ray_cluster).items()
                               if WORKER_B in nodes}
    # Spare capacity, as a cluster keeps it (or KubeRay adds it): an idle node offering what the lost one did.
    ray_cluster.start_node(SPARE, NODE_RESOURCES[WORKER_B], num_cpus=2)

    outcomes: dict[str, list[str]] = {"stream": [], "whole": []}
    stop = threading.Event()

    def client_loop(kind: str, seed: int) -> None:
        while not stop.is_set():
            try:
                synthesize(base_url, kind == "stream", TASK_TEXT, seed)
                outcomes[kind].append("ok")
            except Exception as exc:  # what a client sees: a status, a cut stream, a dropped connection
                outcomes[kind].append(f"{type(exc).__name__}: {str(exc)[:200]}")

    loops = [threading.Thread(target=client_loop, args=(kind, seed)) for seed, kind in
             enumerate(["stream", "stream", "whole", "whole"])]
    for loop in loops:
        loop.start()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        submitted = [client.post("/api/v1/async/synthesize/sft", json={"text": BURST_TEXT, "seed": seed,
                                                                       "voice_id": "pretrained_voice_001"})
                     for seed in range(4)]
    task_ids = [reply.json()["task_id"] for reply in submitted if reply.status_code == 202]
    time.sleep(3)

    killed_at = time.monotonic()
    report["killed_raylet_pid"] = ray_cluster.kill_raylet(WORKER_B)
    report["node_dead_s"] = round(wait_until(
        lambda: all(node["node_id"] != ray_cluster.nodes[WORKER_B].node_id for node in ray_cluster.alive_nodes()),
        120, "the cluster never noticed the lost node"), 1)
    wait_until(lambda: whole(ray_cluster) and healthy(base_url), 600, "the service never became whole again")
    report["whole_again_s"] = round(time.monotonic() - killed_at, 1)
    report["placement_after"] = running(ray_cluster)
    time.sleep(5)  # requests keep running on the whole service
    stop.set()
    for loop in loops:
        loop.join(timeout=300)

    report["client_requests"] = {kind: {"total": len(results), "failed": len([r for r in results if r != "ok"])}
                                 for kind, results in outcomes.items()}
    report["client_failures"] = sorted({result for results in outcomes.values() for result in results
                                        if result != "ok"})
    assert all(results and results[-1] == "ok" for results in outcomes.values()), outcomes  # serving again

    with httpx.Client(base_url=base_url, timeout=120) as client:
        finals = {}
        for task_id in task_ids:
            wait_until(lambda task_id=task_id: client.get(f"/api/v1/async/tasks/{task_id}/status").json()["status"]
                       in ("completed", "failed"), 600, f"task {task_id} never ended")
            finals[task_id] = client.get(f"/api/v1/async/tasks/{task_id}/status").json()
        report["async_tasks"] = {task["status"]: [] for task in finals.values()}
        for task in finals.values():
            report["async_tasks"][task["status"]].append(task.get("error"))
            if task["status"] == "failed":  # a reason the client can read: one sentence
                assert task["error"] and "\n" not in task["error"], task
        # Nothing finished before the loss is lost.
        assert client.get(f"/api/v1/async/tasks/{done['task_id']}/result").json() == done
        assert download(client, done) == audio
        assert client.get(f"/api/v1/voices/{voice_id}").status_code == 200
    assert speak_with(base_url, voice_id) > 0
