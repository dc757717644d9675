"""The service side of the benchmark: the whole application on a private Ray instance, with its
start-up timed and its processes known, so that their memory can be read."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from benchmarks.flow_metrics import DEFAULT_EXPORT_INTERVAL_S
from benchmarks.memory import descendants
from benchmarks.startup import process_start_times, replica_startup
from serve_app.local import LocalServe, free_port

logger = logging.getLogger(__name__)

APP_NAME = "cosyvoice"


class LocalService:
    """The whole Serve application on a private Ray instance (`serve_app.local`), for the length of
    a `with` block, in its own temp dir. Ray is started from this process, so every process of the
    service descends from it: that is how its memory is found.
    """

    def __init__(self, model_dir: Path, dtype: str, torch_threads: int,
                 deployment_options: dict[str, dict[str, Any]] | None = None, settings: dict[str, Any] | None = None,
                 metrics_export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S):
        """`settings`: more of the service's settings (`tts_core.settings.Settings`) by name.
        `metrics_export_interval_s`: how often every process hands Ray its metrics; Ray's default
        unless counts must be read soon after they change (shorter costs CPU while measuring)."""
        self.model_dir, self.dtype, self.torch_threads = model_dir, dtype, torch_threads
        self.metrics_export_interval_s = metrics_export_interval_s
        self.extra_settings = settings or {}
        self.deployment_options = deployment_options
        self.workdir: Path | None = None
        self.service: LocalServe | None = None
        #: Epoch seconds when the start began, and how long until the application was up.
        self.started_at = 0.0
        self.ready_s = 0.0

    @property
    def base_url(self) -> str:
        assert self.service is not None, "the service runs inside the with block"
        return self.service.base_url

    @property
    def metrics_url(self) -> str:
        assert self.service is not None, "the service runs inside the with block"
        return f"http://127.0.0.1:{self.service.metrics_port}/metrics"

    def processes(self) -> list[psutil.Process]:
        return descendants()

    def startup(self) -> dict[str, Any]:
        """Start to ready, by phase (Ray, Serve, the application) and by replica; read while the
        service runs, since its logs go with it."""
        serve_logs = self.workdir / "ray" / "session_latest" / "logs" / "serve"
        phases = {name: round(seconds, 2) for name, seconds in self.service.start_phases.items()}
        return {"ready_s": round(self.ready_s, 2), "phases": phases,
                "replicas": replica_startup(serve_logs, self.started_at, process_start_times(self.processes()))}

    def __enter__(self) -> LocalService:
        # Short, since Ray's Unix socket paths live under it.
        self.workdir = Path(tempfile.mkdtemp(prefix="cvbench-"))
        data = self.workdir / "data"
        settings = {"model_dir": str(self.model_dir), "dtype": self.dtype, "torch_threads": self.torch_threads,
                    "voice_store_uri": str(data / "voices"), "output_store_uri": str(data / "audio"),
                    "task_store_uri": str(data / "tasks"), **self.extra_settings}
        export_ms = int(self.metrics_export_interval_s * 1000)
        self.service = LocalServe(settings, app_name=APP_NAME, temp_dir=str(self.workdir / "ray"),
                                  metrics_port=free_port(), deployment_options=self.deployment_options,
                                  system_config={"metrics_report_interval_ms": export_ms})
        self.started_at, started = time.time(), time.perf_counter()
        try:
            self.service.start()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.ready_s = time.perf_counter() - started
        logger.info("service up at %s in %.1f s", self.base_url, self.ready_s)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        started = time.perf_counter()
        self.service.stop()
        logger.info("service stopped in %.1f s", time.perf_counter() - started)
        shutil.rmtree(self.workdir, ignore_errors=True)
