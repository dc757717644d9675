"""Replica logs keep every request line but successful health checks, which a probe every few seconds
would otherwise repeat on every replica."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx

from deployments.replica_logging import HealthCheckFilter


def access_record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, message, None, None)
    record.serve_access_log = True
    return record


def test_the_filter_drops_successful_health_checks_only() -> None:
    keep = HealthCheckFilter().filter
    assert not keep(access_record("CALL check_health OK 5.8ms"))
    assert not keep(access_record("GET /health 200 44.6ms"))
    assert not keep(access_record("127.0.0.1:5123 - GET /health 200 3.0ms"))
    assert keep(access_record("CALL check_health ERROR 5001.2ms"))
    assert keep(access_record("GET /health 503 12.0ms"))
    assert keep(access_record("POST /api/v1/synthesize/sft 200 2252.7ms"))
    assert keep(access_record("CALL synthesize OK 2109.4ms"))
    assert keep(logging.LogRecord("ray.serve", logging.INFO, __file__, 1, "CALL check_health OK 1.0ms", None, None))


def replica_logs() -> str:
    from ray._private import worker

    serve_logs = Path(worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(path.read_text(errors="replace") for path in sorted(serve_logs.glob("replica_*.log")))


def test_replicas_log_requests_but_not_health_checks(serve_cluster) -> None:
    with httpx.Client(base_url=serve_cluster["base_url"], timeout=120) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
        assert client.get("/api/v1/voices/pretrained/list").status_code == 200
    deadline = time.monotonic() + 30
    while "GET /api/v1/voices/pretrained/list 200" not in (logs := replica_logs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "GET /api/v1/voices/pretrained/list 200" in logs
    assert "check_health OK" not in logs and "GET /health 200" not in logs
