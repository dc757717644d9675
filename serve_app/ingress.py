"""The ingress deployment: serves the FastAPI app (built on the replica, after its handles exist)."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.replica_logging import quiet_health_checks
from serve_app.api.app import create_api
from serve_app.serving.state import ServiceState
from tts_core.settings import Settings


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128)
@serve.ingress()
class ApiIngress:
    async def __init__(self, settings: Settings, frontend: DeploymentHandle, pipeline: DeploymentHandle):
        quiet_health_checks()
        self.state = await ServiceState.create(settings, frontend, pipeline)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.state)
