"""A small client for MLflow's REST API: one pooled session, errors split by what to do.

MLflow's own Python client retries for minutes inside one call; this one tries a few times over
about a second (tenacity) and then raises, so the gate's retry budget is the one in charge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    before_sleep_log,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shared.errors import MlflowNotFound, MlflowRequestError, MlflowUnavailable
from shared.settings import Settings
from worker.metrics import MLFLOW_SECONDS

log = logging.getLogger(__name__)

Json = dict[str, Any]

_short_retry = retry(
    retry=retry_if_exception_type(MlflowUnavailable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=1.0),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)


class MlflowApi:
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.base = settings.mlflow_tracking_uri
        self.timeout = settings.mlflow_timeout_seconds
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if settings.mlflow_token:
            self.session.headers["Authorization"] = f"Bearer {settings.mlflow_token}"
        elif settings.mlflow_username and settings.mlflow_password:
            self.session.auth = (settings.mlflow_username, settings.mlflow_password)
        self.session.verify = not settings.mlflow_insecure_tls

    # -- reads -----------------------------------------------------------------------------
    def get_model_version(self, name: str, version: str) -> Json:
        body = self.call(
            "GET", "/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version}
        )
        return dict(body["model_version"])

    def get_registered_model(self, name: str) -> Json:
        body = self.call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name})
        return dict(body["registered_model"])

    def get_run(self, run_id: str) -> Json:
        return dict(self.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})["run"])

    def search_model_versions(self, filter_string: str) -> Iterator[Json]:
        token = None
        while True:
            params = {"filter": filter_string, "max_results": "200"}
            if token:
                params["page_token"] = token
            body = self.call("GET", "/api/2.0/mlflow/model-versions/search", params=params)
            yield from body.get("model_versions", [])
            token = body.get("next_page_token")
            if not token:
                return

    def healthy(self) -> bool:
        try:
            return self.session.get(f"{self.base}/health", timeout=self.timeout).ok
        except requests.RequestException:
            return False

    # -- writes ----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            json={"name": name, "alias": alias, "version": version},
        )

    def delete_alias(self, name: str, alias: str) -> None:
        self.call(
            "DELETE", "/api/2.0/mlflow/registered-models/alias", json={"name": name, "alias": alias}
        )

    def transition_stage(self, name: str, version: str, stage: str, archive_existing: bool) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/model-versions/transition-stage",
            json={
                "name": name,
                "version": version,
                "stage": stage,
                "archive_existing_versions": archive_existing,
            },
        )

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/model-versions/set-tag",
            json={"name": name, "version": version, "key": key, "value": value},
        )

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.call(
            "POST",
            "/api/2.0/mlflow/registered-models/set-tag",
            json={"name": name, "key": key, "value": value},
        )

    # -- webhooks --------------------------------------------------------------------------
    def list_webhooks(self) -> list[Json]:
        hooks: list[Json] = []
        token = None
        while True:
            params = {"max_results": "100", **({"page_token": token} if token else {})}
            body = self.call("GET", "/api/2.0/mlflow/webhooks", params=params)
            hooks.extend(body.get("webhooks", []))
            token = body.get("next_page_token")
            if not token:
                return hooks

    def create_webhook(self, spec: Json) -> Json:
        return dict(self.call("POST", "/api/2.0/mlflow/webhooks", json=spec)["webhook"])

    def update_webhook(self, webhook_id: str, spec: Json) -> Json:
        path = f"/api/2.0/mlflow/webhooks/{webhook_id}"
        return dict(self.call("PATCH", path, json=spec)["webhook"])

    # -- transport -------------------------------------------------------------------------
    @_short_retry
    def call(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Json:
        url = f"{self.base}{path}"
        started = time.perf_counter()
        try:
            response = self.session.request(
                method, url, params=params, json=json, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise MlflowUnavailable(
                f"MLflow at {self.base} did not answer {method} {path} ({type(exc).__name__}); "
                "the gate retries with backoff: check that the tracking server is up"
            ) from exc
        finally:
            MLFLOW_SECONDS.labels(method, path).observe(time.perf_counter() - started)
        if response.ok:
            return dict(response.json()) if response.content else {}
        return _raise_for(response, method, path)


def _raise_for(response: requests.Response, method: str, path: str) -> Json:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = str(body.get("error_code", "")) if isinstance(body, dict) else ""
    text = str(body.get("message", "")) if isinstance(body, dict) else ""
    detail = text or response.text[:200] or response.reason
    status = response.status_code
    what = f"MLflow answered {status} {code} to {method} {path}: {detail}".replace("  ", " ")
    if status >= 500 or status == 429:
        raise MlflowUnavailable(f"{what}; the gate retries with backoff")
    if status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
        raise MlflowNotFound(what, status, code)
    if status in (401, 403):
        raise MlflowRequestError(
            f"{what}; check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD, then "
            "replay the event",
            status,
            code,
        )
    raise MlflowRequestError(what, status, code)
