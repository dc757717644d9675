"""The application builder: binds every deployment into one Ray Serve application.

`serve run serve_config.yaml` (or `serve run serve_app.app:build_app`) calls `build_app` with the
config's `args`, validated against `Settings`; they override `COSYVOICE_*` environment variables,
which override the defaults. (No `from __future__ import annotations` here: Serve reads the
annotation of `args` at run time to validate it.)
"""

from ray.serve import Application

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
    settings = Settings(**given).resolved()
    frontend = TextFrontendDeployment.bind(settings)
    llm = SpeechTokenLLM.bind(settings)
    pipeline = SynthesisPipeline.bind(frontend, llm, FlowDecoder.bind(settings), Vocoder.bind(settings),
                                      recovery_timeout_s=settings.replica_recovery_timeout_s)
    return ApiIngress.bind(settings, frontend, pipeline)
