"""The worker's Prometheus metrics, served by the worker's main process (GATE_WORKER_METRICS_PORT)
for all its pool processes."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

from shared.metrics import multiprocess_registry

log = logging.getLogger(__name__)

DECISIONS = Counter("gate_decisions_total", "Decisions recorded, by outcome", ["outcome"])
RETRIES = Counter("gate_retries_total", "Events scheduled for another attempt after a failure")
DEAD_LETTERS = Counter(
    "gate_dead_lettered_total", "Events written to the dead-letter store", ["error_class"]
)
VIOLATIONS = Counter(
    "gate_violations_total",
    "Versions found moved to a governed target outside the registry's approval process, by "
    "registry, target and what was done (reported or reverted)",
    ["registry", "target", "action"],
)
MLFLOW_SECONDS = Histogram(
    "gate_mlflow_call_seconds",
    "Latency of calls to the registry's REST API (each try), by method and path",
    ["method", "path"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: not at all); a port in use is a warning, not a crash."""
    if port == 0:
        return
    try:
        start_http_server(port, registry=multiprocess_registry())
    except OSError as exc:
        log.warning(
            "worker metrics not served: port %d: %s (set GATE_WORKER_METRICS_PORT)", port, exc
        )
