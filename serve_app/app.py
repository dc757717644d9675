"""The application builder: binds every deployment into one Ray Serve application.

`serve run serve_config.yaml` (or `serve run serve_app.app:build_app`) calls `build_app` with the
config's `args`; they override `COSYVOICE_*` environment variables and the defaults.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.flow import FlowDecoder
from deployments.frontend import TextFrontendDeployment
from deployments.llm import SpeechTokenLLM
from deployments.pipeline import SynthesisPipeline
from deployments.vocoder import Vocoder
from serve_app.ingress import ApiIngress
from serve_app.settings import Settings


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings = Settings(**(args or {})).resolved()
    frontend = TextFrontendDeployment.bind(settings)
    llm = SpeechTokenLLM.bind(settings)
    pipeline = SynthesisPipeline.bind(settings, frontend, llm, FlowDecoder.bind(settings), Vocoder.bind(settings))
    return ApiIngress.bind(settings, frontend, pipeline)
