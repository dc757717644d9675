"""serve_config.yaml and the GPU config: valid for Ray Serve, and their args valid settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from tts_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "serve_config.yaml", ROOT / "configs" / "gpu.yaml"]
STAGES = {"ApiIngress", "TextFrontendDeployment", "SynthesisPipeline", "SpeechTokenLLM", "FlowDecoder", "Vocoder"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_is_valid_for_ray_serve(path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    [app] = config.applications
    assert app.import_path == "serve_app.app:build_app"
    Settings.model_validate(app.args)  # every arg is a known, valid setting
    deployments = {deployment.name: deployment for deployment in app.deployments}
    assert set(deployments) == STAGES
    for deployment in deployments.values():
        autoscaling = dict(deployment.autoscaling_config)
        assert autoscaling["min_replicas"] <= autoscaling["max_replicas"]
        assert deployment.max_ongoing_requests and deployment.max_queued_requests
        assert 0 < deployment.ray_actor_options.num_cpus


def test_local_config_fits_a_small_machine() -> None:
    [app] = ServeDeploySchema.model_validate(yaml.safe_load(CONFIGS[0].read_text())).applications
    cpus = sum(deployment.ray_actor_options.num_cpus for deployment in app.deployments)
    assert cpus <= 2
    assert all(not deployment.ray_actor_options.num_gpus for deployment in app.deployments)


def test_gpu_config_puts_llm_and_flow_on_gpus_in_half_precision() -> None:
    [app] = ServeDeploySchema.model_validate(yaml.safe_load(CONFIGS[1].read_text())).applications
    gpus = {deployment.name: deployment.ray_actor_options.num_gpus or 0 for deployment in app.deployments}
    assert gpus["SpeechTokenLLM"] > 0 and gpus["FlowDecoder"] > 0
    assert app.args["device"] == "cuda" and app.args["dtype"] in ("bf16", "fp16")


def test_settings_come_from_environment_and_args_override_them(monkeypatch) -> None:
    from serve_app.app import build_app

    monkeypatch.setenv("COSYVOICE_DTYPE", "bf16")
    monkeypatch.setenv("COSYVOICE_MAX_QUEUED_TASKS", "7")
    assert Settings().dtype == "bf16" and Settings().max_queued_tasks == 7
    app = build_app(Settings.model_validate({"max_queued_tasks": 3}))
    settings = app._bound_deployment.init_args[0]
    assert settings.dtype == "bf16" and settings.max_queued_tasks == 3
    assert Path(settings.voice_store_uri).is_absolute()
