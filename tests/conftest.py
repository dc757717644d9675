"""Session-wide fixtures: one tiny twin per test session, shared by every test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that restart the session's cluster run last, so no other test sees stale handles."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_cluster") is not None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_model.twin import make_twin

    started = time.perf_counter()
    path = make_twin(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0)
    (path / ".build_seconds").write_text(f"{time.perf_counter() - started:.2f}\n")
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    from tts_model.loader import load_model

    return load_model(tiny_model_dir)


class ServeCluster:
    """Ray and the whole Serve application on one port and one set of storage folders.

    `stop()` then `start()` is a full restart (a new Ray cluster, so every actor and replica is new)
    on the same port and storage: what a redeploy or a machine reboot looks like to clients.
    """

    app_name = "cosyvoice"

    def __init__(self, model_dir: Path, data_dir: Path):
        import socket

        def free_port() -> int:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                return probe.getsockname()[1]

        self.port, self.metrics_port = free_port(), free_port()
        self.settings = {"model_dir": str(model_dir), "voice_store_uri": str(data_dir / "voices"),
                         "output_store_uri": str(data_dir / "audio"), "task_store_uri": str(data_dir / "tasks"),
                         # Small task limits so the admission tests can fill the queue quickly.
                         "max_queued_tasks": 4, "max_running_tasks": 2}
        self.info = {"base_url": f"http://127.0.0.1:{self.port}", "settings": self.settings,
                     "app_name": self.app_name, "metrics_url": f"http://127.0.0.1:{self.metrics_port}/metrics"}

    def start(self) -> None:
        import ray
        from ray import serve

        from serve_app.app import build_app

        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, _metrics_export_port=self.metrics_port)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build_app(dict(self.settings)), name=self.app_name, route_prefix="/")

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def serve_controller(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's ServeCluster, started once; tests that restart it leave it running."""
    cluster = ServeCluster(tiny_model_dir, tmp_path_factory.mktemp("data"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def serve_cluster(serve_controller: ServeCluster) -> dict:
    """Ray and the whole Serve application on the tiny twin, started once per test session:
    `{"base_url", "settings", "app_name"}` (the same across restarts)."""
    return serve_controller.info


@pytest.fixture(scope="session")
def pipeline_handle(serve_cluster):
    from ray import serve

    return serve.get_deployment_handle("SynthesisPipeline", app_name=serve_cluster["app_name"])
