"""Session-wide fixtures: one tiny twin per test session, shared by every test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that restart the session's cluster run last, so no other test sees stale handles; tests that
    kill replicas just before them, so no other test waits for a replica to come back."""
    items.sort(key=lambda item: (item.get_closest_marker("restarts_cluster") is not None,
                                 item.get_closest_marker("kills_replicas") is not None))


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-protocol server on loopback (see `tests.s3_server`), with the AWS credentials exported."""
    from tests.s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


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


def serve_settings(model_dir: Path, data_dir: Path) -> dict:
    return {"model_dir": str(model_dir), "voice_store_uri": str(data_dir / "voices"),
            "output_store_uri": str(data_dir / "audio"), "task_store_uri": str(data_dir / "tasks"),
            # Small task limits so the admission tests can fill the queue quickly.
            "max_queued_tasks": 4, "max_running_tasks": 2}


@pytest.fixture(scope="session")
def serve_controller(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's service, started once; tests that restart it leave it running."""
    from serve_app.local import LocalServe, free_port

    cluster = LocalServe(serve_settings(tiny_model_dir, tmp_path_factory.mktemp("data")), metrics_port=free_port())
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def serve_cluster(serve_controller) -> dict:
    """Ray and the whole Serve application on the tiny twin, started once per test session:
    `{"base_url", "settings", "app_name", "metrics_url"}` (the same across restarts)."""
    return {"base_url": serve_controller.base_url, "settings": serve_controller.settings,
            "app_name": serve_controller.app_name,
            "metrics_url": f"http://127.0.0.1:{serve_controller.metrics_port}/metrics"}


@pytest.fixture(scope="session")
def pipeline_handle(serve_cluster):
    from ray import serve

    return serve.get_deployment_handle("SynthesisPipeline", app_name=serve_cluster["app_name"])
