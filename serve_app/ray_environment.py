"""The environment Ray's own processes must start with, set wherever Ray starts: `serve_app.local`
(tests, benchmark), `make serve`, the container image, and each node's `ray start` on a cluster
(`env $(python -m serve_app.ray_environment) ray start ...`). Serve's controller, HTTP proxy and
replicas read these once, when they start, so a deployment's runtime_env is too late for them."""

from __future__ import annotations

import shlex

from serve_app.api.body_limit import PROXY_CALLBACK, PROXY_CALLBACK_ENV

RAY_ENVIRONMENT = {
    # Ray Serve's HTTP proxy bounds request bodies as the ingress does (`serve_app.api.body_limit`).
    PROXY_CALLBACK_ENV: PROXY_CALLBACK,
    # Serve's controller reconciles every 0.1 s, and every replica and proxy hands its metrics to
    # Ray every 0.1 s, by default (Ray 2.60's `serve/_private/constants.py`). Idle, the whole service
    # then kept 0.27 of a core busy on a 2-core machine, 0.20 at these values: CPU a request no
    # longer competes with, and that counts against every second of audio at low load. The
    # controller still acts on a replica's start, death or an autoscaling decision within 0.5 s
    # (autoscaling itself waits `upscale_delay_s`, 30 s), and Ray exports metrics every 10 s.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
}


def shell_assignments() -> str:
    """`NAME=value` words, for `env $(python -m serve_app.ray_environment) <command>`."""
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in RAY_ENVIRONMENT.items())


if __name__ == "__main__":
    print(shell_assignments())
