"""The application builder: binds every deployment into one Ray Serve application.

`serve run serve_config.yaml` (or `serve run serve_app.app:build_app`) calls `build_app` with the
config's `args`, validated against `Settings`; they override `COSYVOICE_*` environment variables,
which override the defaults. (No `from __future__ import annotations` here: Serve reads the
annotation of `args` at run time to validate it.)
"""

from collections.abc import Mapping
from typing import Any

from ray.serve import Application, Deployment

from deployments.flow import FlowDecoder
from deployments.frontend import TextFrontendDeployment
from deployments.llm import SpeechTokenLLM
from deployments.pipeline import SynthesisPipeline
from deployments.vocoder import Vocoder
from serve_app.ingress import ApiIngress
from tts_core.settings import Settings


def build_app(args: Settings) -> Application:
    # Re-read with only the explicitly given args, so environment variables fill in the rest.
    given = args.model_dump(exclude_unset=True) if isinstance(args, Settings) else dict(args or {})
    return bind_app(Settings(**given).resolved())


def bind_app(settings: Settings, deployment_options: Mapping[str, Mapping[str, Any]] | None = None) -> Application:
    """The application on resolved `settings`. `deployment_options` sets deployments' options by name, as
    a serve config's `deployments` entries do where the app is run from Python (tests, benchmarks)."""
    options = deployment_options or {}

    def bind(deployment: Deployment, *args: Any, **kwargs: Any) -> Application:
        return deployment.options(**options.get(deployment.name, {})).bind(*args, **kwargs)

    frontend = bind(TextFrontendDeployment, settings)
    pipeline = bind(SynthesisPipeline, frontend, bind(SpeechTokenLLM, settings), bind(FlowDecoder, settings),
                    bind(Vocoder, settings), recovery_timeout_s=settings.replica_recovery_timeout_s)
    return bind(ApiIngress, settings, frontend, pipeline)
