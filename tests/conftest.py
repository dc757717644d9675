"""Session-wide fixtures: one tiny twin per test session, shared by every test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


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


@pytest.fixture(scope="session")
def serve_cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Ray and the whole Serve application on the tiny twin, started once per test session."""
    import socket

    import ray
    from ray import serve

    from serve_app.app import build_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("data")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = {"model_dir": str(tiny_model_dir), "voice_store_uri": str(data / "voices"),
                "output_store_uri": str(data / "audio"), "task_store_uri": str(data / "tasks"),
                # Small task limits so the admission tests can fill the queue quickly.
                "max_queued_tasks": 4, "max_running_tasks": 2}
    serve.run(build_app(settings), name="cosyvoice", route_prefix="/")
    yield {"base_url": f"http://127.0.0.1:{port}", "settings": settings, "app_name": "cosyvoice"}
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def pipeline_handle(serve_cluster):
    from ray import serve

    return serve.get_deployment_handle("SynthesisPipeline", app_name=serve_cluster["app_name"])
