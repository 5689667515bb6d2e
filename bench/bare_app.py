"""The bare baseline of bench/ingest.py: Flask answering 202 after one Redis LPUSH, no checks.

No signature, no parsing, no deduplication, no metrics, no access log: the least a queue-backed
webhook receiver in this stack can do, to show what the gate's own checks cost on top. Served
by gunicorn with the receiver's processes and threads (bench/ingest.py starts it):

    gunicorn --chdir bench -k gthread -w 2 --threads 4 'bare_app:create_app()'

Reads GATE_REDIS_URL. Each request pushes `<delivery id>\\n<body>` to the list `bare.events`,
so that the benchmark can check afterwards that every acknowledged request is there.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, jsonify, request

QUEUE = "bare.events"


def create_app() -> Flask:
    client = redis.Redis.from_url(os.environ["GATE_REDIS_URL"])
    app = Flask("bare_app")

    @app.post("/webhooks/mlflow")
    def webhook() -> tuple[Response, int]:
        delivery_id = request.headers.get("X-MLflow-Delivery-Id", "")
        client.lpush(QUEUE, delivery_id.encode() + b"\n" + request.get_data(cache=False))
        return jsonify(status="accepted"), 202

    return app
