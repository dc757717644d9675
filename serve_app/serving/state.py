"""Everything one ingress replica serves with, built once when the replica starts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from deployments.bistream_inbox import bistream_inbox_actor
from deployments.task_manager import task_manager_actor
from deployments.voice_store import voice_store_actor
from serve_app.api.protocol import Health
from serve_app.serving.synthesis import SynthesisService
from serve_app.serving.tasks import TaskService
from serve_app.serving.voices import VoiceService
from tts_core.settings import Settings
from tts_core.storage.blobs import BlobStore

logger = logging.getLogger("ray.serve")

#: The deployments whose health /health reports, by the name it reports them under.
STAGES = {"frontend": "TextFrontendDeployment", "llm": "SpeechTokenLLM", "flow": "FlowDecoder",
          "vocoder": "Vocoder", "pipeline": "SynthesisPipeline"}
HEALTH_TIMEOUT_S = 5.0


class ServiceState:
    def __init__(self, settings: Settings, frontend: Any, pipeline: Any, store: Any, manager: Any,
                 model_info: dict[str, Any], pretrained: dict[str, Any]):
        self.settings, self.frontend, self.pipeline, self.store = settings, frontend, pipeline, store
        # Where streamed text is posted for the LLM sequences that speak it.
        self.inbox = bistream_inbox_actor(settings.app_name)
        self.tasks = TaskService(manager, model_info["sample_rate"])
        self.model_info = model_info
        self.outputs = BlobStore(settings.output_store_uri)
        self.voices = VoiceService(store, frontend, pretrained)
        self.synthesis = SynthesisService(pipeline, frontend, self.voices, self.outputs, model_info["sample_rate"])

    @classmethod
    async def create(cls, settings: Settings, frontend: Any, pipeline: Any) -> ServiceState:
        # The actors start while the front end is still loading: each is a process of its own, with
        # seconds of start-up that would otherwise come after the front end's.
        manager = task_manager_actor(settings)
        model_info, pretrained, store, _ = await asyncio.gather(
            frontend.model_info.remote(), frontend.pretrained_voices.remote(),
            voice_store_actor(settings.voice_store_uri, settings.app_name), manager.ready.remote())
        return cls(settings, frontend, pipeline, store, manager, model_info, pretrained)

    async def _ping(self, name: str, call: Any) -> bool:
        try:
            await asyncio.wait_for(call, HEALTH_TIMEOUT_S)
            return True
        except Exception as exc:
            logger.warning("health: %s not ready: %r", name, exc)
            return False

    async def health(self) -> Health:
        checks = {stage: self._ping(stage, serve.get_deployment_handle(deployment, self.settings.app_name)
                                    .check_health.remote())
                  for stage, deployment in STAGES.items()}
        checks["voice_store"] = self._ping("voice_store", self.store.count.remote())
        checks["task_manager"] = self._ping("task_manager", self.tasks.manager.ready.remote())
        llm = serve.get_deployment_handle(STAGES["llm"], self.settings.app_name)
        precision, *ready = await asyncio.gather(self._precision(llm), *checks.values())
        results = dict(zip(checks, ready, strict=True))
        voice_ready = results["voice_store"] and results["frontend"]
        healthy = all(results.values())
        model = "cosyvoice2-twin" if self.model_info["is_twin"] else self.model_info["model_dir"].rsplit("/", 1)[-1]
        return Health(status="healthy" if healthy else "unavailable", voice_manager_ready=voice_ready,
                      async_synthesis_ready=healthy, model=model, precision=precision, stages=results)

    async def _precision(self, llm: Any) -> str | None:
        try:
            return await asyncio.wait_for(llm.precision.remote(), HEALTH_TIMEOUT_S)
        except Exception:  # reported as not ready by its own check
            return None

    async def expire_outputs_forever(self, period_s: float = 60.0) -> None:
        """Delete synthesized files older than the retention period, every `period_s`."""
        while True:
            try:
                removed = await asyncio.to_thread(self.outputs.delete_older_than, self.settings.audio_retention_s)
                if removed:
                    logger.info("expired %d synthesized audio files", len(removed))
            except Exception:
                logger.exception("audio retention sweep failed")
            await asyncio.sleep(period_s)
