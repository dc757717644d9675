"""The FastAPI ingress deployment."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import __version__
from serve_app.settings import Settings

api = FastAPI(title="CosyVoice2 TTS API", version=__version__)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128)
@serve.ingress(api)
class ApiIngress:
    def __init__(self, settings: Settings, frontend: DeploymentHandle, pipeline: DeploymentHandle):
        self.settings, self.frontend, self.pipeline = settings, frontend, pipeline

    @api.get("/")
    def root(self) -> dict:
        return {"message": "CosyVoice2 TTS API", "version": __version__, "docs": "/docs"}
