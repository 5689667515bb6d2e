"""The receiver's Prometheus metrics: webhooks by outcome, acknowledgement latency, and the
depth of the queue and of the dead-letter store (read from Redis at scrape time).

Every label value comes from a fixed set: the known sources, and UNKNOWN for any other path under
/webhooks/, so that requests to made-up paths cannot grow /metrics (or the multiprocess files).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import redis
from flask import Blueprint, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from receiver.webhooks import WEBHOOKS_PATH
from shared import keys
from shared.metrics import multiprocess_registry

UNKNOWN = "unknown"  # the source label of a path under /webhooks/ that is no known source

WEBHOOKS = Counter(
    "gate_webhooks_received_total",
    "Webhooks received, by source and outcome (accepted, duplicate, ignored, bad_request, "
    "unauthorized, too_large, unavailable)",
    ["source", "outcome"],
)
ACK_SECONDS = Histogram(
    "gate_webhook_ack_seconds",
    "Time from receiving a webhook to answering it",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class QueueDepthCollector(Collector):
    """Queue and dead-letter depth, read live from Redis at each scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pipe = self.client.pipeline()
            pipe.llen(keys.QUEUE)
            pipe.hlen(keys.UNACKED)
            pipe.zcard(keys.DEADLETTER_INDEX)
            queued, in_flight, dead = pipe.execute()
        except redis.RedisError:
            return
        yield GaugeMetricFamily("gate_queue_depth", "Events waiting in the queue", queued)
        yield GaugeMetricFamily(
            "gate_tasks_in_flight", "Events delivered to a worker, not yet acknowledged", in_flight
        )
        yield GaugeMetricFamily("gate_deadletter_depth", "Events in the dead-letter store", dead)


def metrics_blueprint(client: redis.Redis, sources: Iterable[str]) -> Blueprint:
    """GET /metrics, and the counting of every answer under /webhooks/ by source and outcome."""
    metrics = Blueprint("metrics", __name__)
    label_of = {WEBHOOKS_PATH + name: name for name in sources}
    depth = CollectorRegistry()
    depth.register(QueueDepthCollector(client))

    @metrics.before_app_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @metrics.after_app_request
    def count_webhook(response: Response) -> Response:
        if request.path.startswith(WEBHOOKS_PATH):
            source = label_of.get(request.path, UNKNOWN)
            WEBHOOKS.labels(source, g.get("outcome", UNKNOWN)).inc()
            ACK_SECONDS.labels(source).observe(time.perf_counter() - g.get("started", 0.0))
        return response

    @metrics.get("/metrics")
    def scrape() -> Response:
        text = generate_latest(multiprocess_registry()) + generate_latest(depth)
        return Response(text, mimetype=CONTENT_TYPE_LATEST)

    return metrics
