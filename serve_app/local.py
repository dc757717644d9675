"""The whole application on a private Ray instance started by this process: what the tests and the
benchmark run against (`serve run` is the command-line way to the same)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServe:
    """Ray and the Serve application, on loopback. `stop()` then `start()` is a full restart (a new
    Ray instance, so every actor and replica is new) on the same port and settings."""

    def __init__(self, settings: dict[str, Any], app_name: str = "cosyvoice", temp_dir: str | None = None,
                 metrics_port: int | None = None, deployment_options: dict[str, dict[str, Any]] | None = None,
                 system_config: dict[str, Any] | None = None):
        """`deployment_options`: options of deployments by name (`serve_app.app.bind_app`), e.g. replicas;
        `system_config`: Ray's internal settings (`ray.init(_system_config=...)`)."""
        self.settings, self.app_name, self.temp_dir = dict(settings, app_name=app_name), app_name, temp_dir
        self.port, self.metrics_port = free_port(), metrics_port
        self.deployment_options = deployment_options or {}
        self.system_config = system_config
        #: Seconds each phase of the last `start()` took: Ray's own processes, Serve's controller
        #: and proxy, then the application until every replica is up (the benchmark reports them).
        self.start_phases: dict[str, float] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import ray
        from ray import serve

        from serve_app.app import bind_app
        from serve_app.ray_environment import RAY_ENVIRONMENT
        from tts_core.settings import Settings

        # Ray's processes inherit this process's environment.
        for name, value in RAY_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        # `address="local"` always starts a new instance, never joining one already running.
        # num_cpus is what Ray schedules by, not a limit: the deployments' fractional CPUs must fit
        # even on a 2-core machine.
        self.start_phases = {}
        started = time.perf_counter()
        ray.init(address="local", num_cpus=max(8, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 _temp_dir=self.temp_dir, _metrics_export_port=self.metrics_port,
                 _system_config=self.system_config)
        self.start_phases["ray_init_s"] = time.perf_counter() - started
        try:
            started = time.perf_counter()
            serve.start(http_options={"host": "127.0.0.1", "port": self.port})
            self.start_phases["serve_start_s"] = time.perf_counter() - started
            started = time.perf_counter()
            app = bind_app(Settings(**self.settings).resolved(), self.deployment_options)
            serve.run(app, name=self.app_name, route_prefix="/")
            self.start_phases["serve_run_s"] = time.perf_counter() - started
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                ray.shutdown()

    def restart(self) -> None:
        self.stop()
        self.start()
