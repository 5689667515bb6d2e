"""One REST client for every registry the gate talks to, used by composition.

A `Service` says where (base URL), how to authenticate, and what to tell an operator; the
client owns one pooled session, a short tenacity retry (about a second, so that the gate's own
retry budget stays in charge), the mapping of answers to errors (a table, by status), and the
one pagination loop. MLflow's own Python client retries for minutes inside one call; this one
does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
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

from shared.errors import (
    MlflowForbidden,
    MlflowNotFound,
    MlflowRequestError,
    MlflowUnavailable,
)
from shared.urls import redacted
from worker.metrics import MLFLOW_SECONDS

log = logging.getLogger(__name__)

Json = dict[str, Any]


@dataclass(frozen=True)
class Service:
    """A registry's REST endpoint, and the words an operator needs when it fails."""

    name: str  # in every message: "MLflow answered 503 ..."
    base_url: str
    token: str | None = None  # a bearer token, or:
    basic_auth: tuple[str, str] | None = None
    verify_tls: bool = True
    timeout: float = 10.0
    credentials_hint: str = "check the credentials"  # what to fix on a 401 or 403
    down_hint: str = "check that the service is up"  # what to check when it does not answer

    @property
    def shown_url(self) -> str:
        """The base URL without any password in it: safe for logs and dead letters."""
        return redacted(self.base_url)


_short_retry = retry(
    retry=retry_if_exception_type(MlflowUnavailable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=1.0),
    before_sleep=before_sleep_log(log, logging.WARNING),
    reraise=True,
)

# What an error answer means, by status: (the error to raise, what to tell the operator).
# Anything else 4xx is a plain MlflowRequestError; anything 5xx is MlflowUnavailable.
_REPLAY = "then replay the event with `mlflow-gate dlq replay <id>` (or run the command again)"
_BY_STATUS: dict[int, tuple[type[MlflowRequestError] | None, str]] = {
    429: (None, "the gate retries with backoff"),
    401: (MlflowForbidden, "the gate's credentials were refused: {credentials}, " + _REPLAY),
    403: (
        MlflowForbidden,
        "the gate's account lacks a permission: {credentials} and give that account access to "
        "the model, its versions and their runs, " + _REPLAY,
    ),
    404: (MlflowNotFound, ""),
}


class RestClient:
    def __init__(self, service: Service, session: requests.Session | None = None) -> None:
        self.service = service
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if service.token:
            self.session.headers["Authorization"] = f"Bearer {service.token}"
        elif service.basic_auth:
            self.session.auth = service.basic_auth
        self.session.verify = service.verify_tls

    @_short_retry
    def call(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Json:
        url = f"{self.service.base_url}{path}"
        started = time.perf_counter()
        try:
            response = self.session.request(
                method, url, params=params, json=json, timeout=self.service.timeout
            )
        except requests.RequestException as exc:
            raise MlflowUnavailable(
                f"{self.service.name} at {self.service.shown_url} did not answer {method} {path} "
                f"({type(exc).__name__}); the gate retries with backoff: "
                f"{self.service.down_hint}"
            ) from exc
        finally:
            MLFLOW_SECONDS.labels(method, path).observe(time.perf_counter() - started)
        if response.ok:
            return _body(response)
        raise self._error(response, method, path)

    def pages(
        self, path: str, key: str, params: dict[str, str] | None = None, page_size: int = 200
    ) -> Iterator[Json]:
        """Every item under `key` of a paged GET, following next_page_token."""
        token = None
        while True:
            query = {**(params or {}), "max_results": str(page_size)}
            if token:
                query["page_token"] = token
            body = self.call("GET", path, params=query)
            yield from (item for item in body.get(key, []) if isinstance(item, dict))
            token = body.get("next_page_token")
            if not token:
                return

    def answers(self, method: str, path: str, params: dict[str, str] | None = None) -> bool:
        """Whether the service answers this call successfully now (for health checks)."""
        try:
            self.call(method, path, params=params)
        except (MlflowUnavailable, MlflowRequestError):
            return False
        return True

    def _error(self, response: requests.Response, method: str, path: str) -> Exception:
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = str(body.get("error_code", "")) if isinstance(body, dict) else ""
        text = str(body.get("message", "")) if isinstance(body, dict) else ""
        detail = text or response.text[:200] or response.reason
        status = response.status_code
        what = f"{self.service.name} answered {status} {code} to {method} {path}: {detail}"
        what = what.replace("  ", " ")
        if code == "RESOURCE_DOES_NOT_EXIST" and status < 500:
            status = 404
        if status < 500 and _write_race(detail):
            # MLflow's tag upserts race on its database (two writers of one new tag): the row
            # exists now, so the same write succeeds when tried again.
            return MlflowUnavailable(f"{what}; a write raced another one, the gate retries it")
        kind, advice = _BY_STATUS.get(status, (None if status >= 500 else MlflowRequestError, ""))
        if kind is None:
            return MlflowUnavailable(f"{what}; the gate retries with backoff")
        advice = advice.format(credentials=self.service.credentials_hint)
        return kind(f"{what}; {advice}" if advice else what, response.status_code, code)


_RACES = ("UNIQUE constraint failed", "duplicate key value violates unique constraint")


def _write_race(detail: str) -> bool:
    return "IntegrityError" in detail and any(race in detail for race in _RACES)


def _body(response: requests.Response) -> Json:
    """A successful answer's JSON object; {} for an empty or plain-text one (MLflow's /health
    answers "OK")."""
    try:
        body = response.json() if response.content else {}
    except ValueError:
        return {}
    return dict(body) if isinstance(body, dict) else {}
