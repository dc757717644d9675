# The service's container image: the project and every dependency, installed by scripts/setup.sh
# exactly as on a developer machine. One image serves every node of a Ray cluster (KubeRay runs
# `ray start` in it: configs/rayservice.yaml). The CUDA build of torch runs on CPU and GPU nodes.
#   docker build -t cosyvoice-serve:0.1.0 .
FROM python:3.11-slim-bookworm

# wget: KubeRay's liveness and readiness probes call it; libgomp1: torch's and onnxruntime's OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
RUN PYTHON=python3.11 bash scripts/setup.sh && rm -rf "$HOME/.cache/pip"

# `ray`, `serve` and the project's Python first on the path, for KubeRay's commands and for shells.
ENV PATH=/app/.venv/bin:$PATH \
    COSYVOICE_MODEL_CACHE_DIR=/app/.cache/cosyvoice-serve

# What Ray's own processes must start with (serve_app/ray_environment.py, the source of these values).
ENV RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.api.body_limit:proxy_middlewares \
    RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5 \
    RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=1000
EXPOSE 6379 8000 8265 10001
