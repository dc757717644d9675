"""configs/rayservice.yaml (KubeRay): its serveConfigV2 is configs/gpu.yaml, valid for Ray Serve, and
every replica it asks for fits a pod of the cluster it describes; the Dockerfile builds the image
those pods run with the project's own setup script, and with the environment Ray's processes need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.ray_environment import RAY_ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "configs" / "rayservice.yaml"


def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


def pod_groups(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Group name ("head" for the head) -> its rayStartParams and its one container."""
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({group["groupName"]: group for group in cluster["workerGroupSpecs"]})
    return {name: {"params": group["rayStartParams"], "container": group["template"]["spec"]["containers"][0],
                   "volumes": group["template"]["spec"].get("volumes", [])} for name, group in groups.items()}


def test_serve_config_is_the_gpu_config_and_valid() -> None:
    service = manifest()
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text()), (
        "configs/rayservice.yaml's serveConfigV2 differs from configs/gpu.yaml: copy the config into it")
    ServeDeploySchema.model_validate(embedded)


def test_cluster_runs_this_ray_with_token_authentication() -> None:
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}


def test_every_replica_fits_a_worker_pod_and_none_runs_on_the_head() -> None:
    service = manifest()
    groups = pod_groups(service["spec"]["rayClusterConfig"])
    assert groups["head"]["params"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" in groups["gpu-workers"]["container"]["resources"]["limits"]
    pods = {name: group["container"]["resources"]["limits"] for name, group in groups.items() if name != "head"}
    [app] = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])).applications
    for deployment in app.deployments:
        options = deployment.ray_actor_options
        fits = [name for name, limits in pods.items()
                if options.num_cpus <= float(limits["cpu"])
                and (options.num_gpus or 0) <= float(limits.get("nvidia.com/gpu", 0))]
        assert fits, f"{deployment.name} fits no worker pod"
        if options.num_gpus:
            assert fits == ["gpu-workers"], deployment.name


def test_every_pod_runs_one_image_with_the_models_and_the_store_credentials() -> None:
    service = manifest()
    model_dir = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["model_dir"]
    groups = pod_groups(service["spec"]["rayClusterConfig"])
    assert len({group["container"]["image"] for group in groups.values()}) == 1
    for name, group in groups.items():
        container = group["container"]
        # Credentials reach the stores as the standard AWS environment, from a Secret: never in the config.
        assert container["envFrom"] == [{"secretRef": {"name": "cosyvoice-object-store"}}], name
        [mount] = container["volumeMounts"]
        assert model_dir.startswith(mount["mountPath"] + "/") and mount["readOnly"], name
        assert [volume["name"] for volume in group["volumes"]] == [mount["name"]], name
    assert "AWS_SECRET" not in service["spec"]["serveConfigV2"]


def test_the_image_is_built_by_the_setup_script() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN .*bash scripts/setup\.sh", dockerfile, re.MULTILINE)
    assert re.search(r"^ENV PATH=/app/\.venv/bin:\$PATH", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "models", ".git"} <= set(ignored)


def test_the_image_and_make_serve_start_ray_with_the_services_ray_environment() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, value in RAY_ENVIRONMENT.items():
        assert re.search(rf"^(ENV |    ){name}={re.escape(value)}( \\)?$", dockerfile, re.MULTILINE), name
    [serve_recipe] = re.findall(r"^serve:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert serve_recipe.startswith("env $$($(VENV)/python -m serve_app.ray_environment) "), serve_recipe
    printed = subprocess.run([sys.executable, "-m", "serve_app.ray_environment"], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.split()
    assert dict(word.split("=", 1) for word in printed) == RAY_ENVIRONMENT
