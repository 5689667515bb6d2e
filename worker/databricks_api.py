"""A client for a Databricks workspace's MLflow REST API (the workspace model registry).

The same transport as MlflowApi (pooled session, a short tenacity retry, errors split into
transient and permanent), pointed at GATE_DATABRICKS_HOST with GATE_DATABRICKS_TOKEN, plus the
endpoints only Databricks has: transition requests, its stage transition with a comment, and
registry webhooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import requests

from shared.errors import ConfigError, MlflowRequestError, MlflowUnavailable
from shared.settings import Settings
from worker.mlflow_api import Json, MlflowApi

REQUESTS_LIST = "/api/2.0/mlflow/transition-requests/list"
REQUESTS_APPROVE = "/api/2.0/mlflow/transition-requests/approve"
REQUESTS_REJECT = "/api/2.0/mlflow/transition-requests/reject"
TRANSITION_STAGE = "/api/2.0/mlflow/databricks/model-versions/transition-stage"
WEBHOOKS_CREATE = "/api/2.0/mlflow/registry-webhooks/create"
WEBHOOKS_LIST = "/api/2.0/mlflow/registry-webhooks/list"


class DatabricksApi(MlflowApi):
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        if not settings.databricks_host or not settings.databricks_token:
            raise ConfigError(
                "GATE_DATABRICKS_HOST and GATE_DATABRICKS_TOKEN must be set to reach the "
                "Databricks workspace"
            )
        workspace = dataclasses.replace(
            settings,
            mlflow_tracking_uri=settings.databricks_host,
            mlflow_token=settings.databricks_token,
            mlflow_username=None,
            mlflow_password=None,
            mlflow_insecure_tls=False,
        )
        super().__init__(workspace, session)

    # -- transition requests ---------------------------------------------------------------
    def list_transition_requests(self, name: str, version: str) -> list[Json]:
        """The open transition requests of a version (with who asked: `user_id`)."""
        body = self.call("GET", REQUESTS_LIST, params={"name": name, "version": version})
        return [r for r in body.get("requests", []) if isinstance(r, dict)]

    def approve_transition_request(
        self, name: str, version: str, stage: str, *, archive_existing_versions: bool, comment: str
    ) -> Json:
        body = _transition(name, version, stage, archive_existing_versions, comment)
        return dict(self.call("POST", REQUESTS_APPROVE, json=body).get("activity") or {})

    def reject_transition_request(self, name: str, version: str, stage: str, comment: str) -> Json:
        body = {"name": name, "version": version, "stage": stage, "comment": comment}
        return dict(self.call("POST", REQUESTS_REJECT, json=body).get("activity") or {})

    def transition_stage_with_comment(
        self, name: str, version: str, stage: str, *, archive_existing_versions: bool, comment: str
    ) -> Json:
        body = _transition(name, version, stage, archive_existing_versions, comment)
        answer = self.call("POST", TRANSITION_STAGE, json=body)
        return dict(answer.get("model_version_databricks") or answer.get("model_version") or {})

    # -- registry webhooks -----------------------------------------------------------------
    def create_registry_webhook(self, spec: Json) -> Json:
        return dict(self.call("POST", WEBHOOKS_CREATE, json=spec).get("webhook") or {})

    def healthy(self) -> bool:
        try:
            self.call("GET", WEBHOOKS_LIST, params={"max_results": "1"})
        except (MlflowUnavailable, MlflowRequestError):
            return False
        return True

    # -- transport -------------------------------------------------------------------------
    def call(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Json:  # type: ignore[override]
        try:
            return super().call(method, path, params=params, json=json)
        except MlflowUnavailable as exc:
            raise MlflowUnavailable(_reworded(exc)) from exc
        except MlflowRequestError as exc:
            message = _reworded(exc)
            if exc.status in (401, 403):
                message = (
                    message.split("; check MLFLOW_TRACKING_TOKEN")[0]
                    + "; check GATE_DATABRICKS_TOKEN (a token allowed to manage the model's "
                    "transition requests), then replay the event"
                )
            raise type(exc)(message, exc.status, exc.error_code) from exc


def _reworded(exc: Exception) -> str:
    return (
        str(exc)
        .replace("MLflow answered", "Databricks answered", 1)
        .replace("MLflow at", "Databricks at", 1)
        .replace("check that the tracking server is up", "check the workspace and its status")
    )


def _transition(name: str, version: str, stage: str, archive: bool, comment: str) -> Json:
    """The body of an approval or a transition: the API requires archive_existing_versions."""
    return {
        "name": name,
        "version": version,
        "stage": stage,
        "archive_existing_versions": archive,
        "comment": comment,
    }
