"""A real multi-node Ray cluster on this machine, driven through Ray's and Serve's command lines.

Each node is a `ray start --block` process with its own temp dir, ports and custom resources, so
the scheduler sees separate nodes; stopping that process stops its node, and killing the node's
raylet is the node dying. Token authentication is on, as Ray starts clusters by default: the
token sits in a file named by `RAY_AUTH_TOKEN_PATH`, which every node and every CLI call reads
(`RAY_AUTH_MODE=token`). The dashboard's REST API answers what the cluster runs where.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from serve_app.local import free_port
from serve_app.ray_environment import RAY_ENVIRONMENT

RAY_BIN = Path(sys.executable).parent
#: The node label naming each node, as the cluster reports it.
NODE_LABEL = "cosyvoice-test/node"
START_ATTEMPTS = 3
#: Small, so three nodes and the session's own Ray fit beside each other in shared memory.
OBJECT_STORE_BYTES = 150 * 2**20


@dataclass
class RayNode:
    name: str
    resources: dict[str, float]
    process: subprocess.Popen
    temp_dir: Path
    node_id: str | None = None
    log: Any = field(default=None, repr=False)

    def raylet(self) -> psutil.Process:
        """The node's raylet: what the node is, to the rest of the cluster."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            if child.name() == "raylet":
                return child
        raise LookupError(f"node {self.name} has no raylet")


class LocalRayCluster:
    """A head node and worker nodes on loopback; `stop()` ends every process it started, and only those."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.work = work
        token_file = work / "auth_token"
        token_file.write_text(secrets.token_hex(32))
        token_file.chmod(0o600)
        # Every node starts as the README's `ray start` does: with the service's Ray environment.
        self.env = {**env, **RAY_ENVIRONMENT, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.token = token_file.read_text()
        self.nodes: dict[str, RayNode] = {}
        self.gcs_port, self.dashboard_port = free_port(), free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, name: str, resources: dict[str, float], num_cpus: float, head: bool = False) -> RayNode:
        """Start a node and wait until it has joined. A node whose raylet misses Ray's fixed 30 s start-up
        deadline (a loaded machine) exits; it is started again, up to `START_ATTEMPTS` times."""
        for attempt in range(1, START_ATTEMPTS + 1):
            if head:  # fresh ports: the failed head's may linger
                self.gcs_port, self.dashboard_port = free_port(), free_port()
            node = self._launch(name, resources, num_cpus, head)
            try:
                node.node_id = self._wait_for_node(node)
                return node
            except ChildProcessError:
                self._stop_node(node)
                if attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, name: str, resources: dict[str, float], num_cpus: float, head: bool) -> RayNode:
        # Short: Ray's socket paths live under it.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rc-{name}-"))
        command = [str(RAY_BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(num_cpus), "--resources", json.dumps(resources), "--temp-dir", str(temp_dir),
                   "--labels", json.dumps({NODE_LABEL: name}),
                   "--object-store-memory", str(OBJECT_STORE_BYTES), "--node-manager-port", str(free_port()),
                   "--object-manager-port", str(free_port()), "--metrics-export-port", str(free_port()),
                   "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port())]
        if head:
            command += ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                        str(self.dashboard_port), "--ray-client-server-port", str(free_port())]
        else:
            command += ["--address", self.address]
        log = (self.work / f"node-{name}.log").open("w")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                   start_new_session=True)
        node = RayNode(name, resources, process, temp_dir, log=log)
        self.nodes[name] = node
        return node

    def _wait_for_node(self, node: RayNode, timeout_s: float = 180) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise ChildProcessError((self.work / f"node-{node.name}.log").read_text()[-3000:])
            try:
                for entry in self.alive_nodes():
                    if entry["labels"].get(NODE_LABEL) == node.name:
                        return entry["node_id"]
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"node {node.name} did not join:\n" + (self.work / f"node-{node.name}.log").read_text())

    def get(self, path: str, **params: Any) -> Any:
        """GET a dashboard REST route with the cluster's token."""
        response = httpx.get(f"{self.dashboard}{path}", params=params, timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return response.json()

    def alive_nodes(self) -> list[dict[str, Any]]:
        reply = self.get("/api/v0/nodes", detail="true", limit=100)
        return [node for node in reply["data"]["result"]["result"] if node["state"] == "ALIVE"]

    def actors(self, class_name: str) -> list[dict[str, Any]]:
        """Live or starting actors of a class (state; node id once the actor is up): replicas being created
        show here before Serve reports them."""
        reply = self.get("/api/v0/actors", detail="true", limit=10000, filter_keys="class_name",
                         filter_predicates="=", filter_values=class_name)
        return [actor for actor in reply["data"]["result"]["result"] if actor["state"] != "DEAD"]

    def node_name(self, node_id: str) -> str:
        return next((node.name for node in self.nodes.values() if node.node_id == node_id), node_id[:8])

    def cli(self, *args: str, timeout_s: float = 120) -> str:
        """Run a `serve` or `ray` command against the cluster; its stdout."""
        result = subprocess.run([str(RAY_BIN / args[0]), *args[1:]], env=self.env, capture_output=True, text=True,
                                timeout=timeout_s, cwd=self.work)
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    def deployments(self, app: str) -> dict[str, dict[str, Any]]:
        """Each deployment as the Serve controller reports it: status, message, target_num_replicas, and
        its replicas (state, node id, pid)."""
        details = self.get("/api/serve/applications/")
        return details.get("applications", {}).get(app, {}).get("deployments", {})

    def kill_raylet(self, name: str) -> int:
        """SIGKILL the node's raylet, as when a machine dies; its `ray start` then tears the rest down."""
        pid = self.nodes[name].raylet().pid
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        """Stop worker nodes, then the head."""
        for node in sorted(self.nodes.values(), key=lambda node: node.name == "head"):
            self._stop_node(node)

    @staticmethod
    def _stop_node(node: RayNode) -> None:
        """End the node's `ray start`, then kill whatever of its processes is left (found by its temp dir)."""
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.process.kill()
        node.log.close()
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(str(node.temp_dir) in arg for arg in process.info["cmdline"] or ()):
                    process.kill()
            except psutil.Error:
                continue
        shutil.rmtree(node.temp_dir, ignore_errors=True)
