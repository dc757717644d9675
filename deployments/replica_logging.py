"""Replica logs: successful health checks stay out of the request log.

Each `GET /health` calls `check_health` on every stage, so a load balancer or orchestrator probing
every few seconds would add an access-log line per replica per probe. Serve's `logging_config` can
only switch a deployment's access log off entirely, so a filter drops those lines alone; failed
checks, and every other request, are still logged.
"""

from __future__ import annotations

import logging
import re

#: Serve's access-log lines of a successful check: the ingress answering `GET /health` with 200, and a
#: stage's `check_health` call returning (an optional client address comes first).
HEALTH_CHECK_OK = re.compile(r"(?:^|\s)(?:GET /health 200|CALL check_health OK) [\d.]+ms$")


class HealthCheckFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(record, "serve_access_log", False) and HEALTH_CHECK_OK.search(record.getMessage()))


def quiet_health_checks() -> None:
    """Install the filter on Serve's logger in this replica's process (once)."""
    logger = logging.getLogger("ray.serve")
    if not any(isinstance(existing, HealthCheckFilter) for existing in logger.filters):
        logger.addFilter(HealthCheckFilter())
