"""The design the gate replaces: a webhook handler that decides inside the request.

POST /webhooks/mlflow verifies MLflow's signature, parses the event, and then, before answering,
fetches the facts from MLflow, evaluates the policy and applies the decision (alias and tags), with
the gate's own code (worker.pipeline.Pipeline), so that the work is exactly the
worker's. It answers 200 once done, 503 if MLflow did not answer. Served by gunicorn like the
receiver (bench/slow_mlflow.py starts it):

    gunicorn --chdir bench -k gthread -w 2 --threads 4 'sync_handler:create_app()'

Reads GATE_WEBHOOK_SECRET, MLFLOW_TRACKING_URI and GATE_POLICY_FILE like the gate.
"""

from __future__ import annotations

import time

from _stack import scratch_ledger
from flask import Flask, Response, jsonify, request

from shared import signing
from shared.errors import EventError, MlflowUnavailable, SignatureError
from shared.events import Kind, RegistryKind, parse_mlflow_webhook
from shared.policy import load_policies
from shared.settings import Settings
from worker.pipeline import Pipeline
from worker.registries import Registries, open_source


def create_app() -> Flask:
    settings = Settings.from_env()
    verifier = signing.MlflowVerifier(settings.webhook_secret or "")
    registries = Registries({RegistryKind.MLFLOW: open_source(settings)})
    pipeline = Pipeline(registries, load_policies(settings.policy_file), scratch_ledger())
    app = Flask("sync_handler")

    @app.post("/webhooks/mlflow")
    def webhook() -> tuple[Response, int]:
        body = request.get_data(cache=False)
        try:
            verifier.verify(body, request.headers)
            event_id = signing.event_id_of(body, request.headers)
            event = parse_mlflow_webhook(body, event_id=event_id, received_at=time.time())
        except SignatureError as exc:
            return jsonify(status="unauthorized", message=str(exc)), 401
        except EventError as exc:
            return jsonify(status="bad_request", message=str(exc)), 400
        if event is None or event.kind is not Kind.REQUEST or event.version is None:
            return jsonify(status="ignored"), 200
        try:
            outcome = pipeline.handle(event)
        except MlflowUnavailable as exc:
            return jsonify(status="unavailable", message=str(exc)), 503
        return jsonify(status="decided", message=outcome), 200

    return app
