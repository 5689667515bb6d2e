"""A fake Databricks workspace: the MLflow REST endpoints of the workspace model registry that
the gate uses, over real HTTP on loopback, strict the way the real API is strict.

- Every request needs `Authorization: Bearer <token>` (else 401, as Databricks answers); a run
  in `forbidden_runs` is refused with 403 PERMISSION_DENIED, as for a principal without access.
- Bodies are type-checked: a missing `archive_existing_versions`, a version sent as a number, a
  boolean sent as a string are refused with 400 INVALID_PARAMETER_VALUE.
- Approving or rejecting a request that is not open is refused with 404 RESOURCE_DOES_NOT_EXIST.
- Listings page as documented: `registered-models/list` (max_results <= 1000, default 100) and
  `model-versions/search` (max_results <= 10000) answer `next_page_token` while more remain; a
  max_results out of range or a page token the server did not issue is refused with 400.
  `page_limit` caps every page, as a server may, so that tests see pagination.
- Registry webhooks created through the API receive the events, signed as Databricks signs them
  (hex HMAC-SHA256 of the body, computed here with hmac/hashlib, independently of the gate):
  TRANSITION_REQUEST_CREATED when a test asks for a transition, and
  MODEL_VERSION_TRANSITIONED_STAGE whenever a version changes stage.

Every call is recorded in `calls` (method, path, params, body) for the tests to look at.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
from harness import LOOPBACK, free_port

STAGES = ("None", "Staging", "Production", "Archived")
EVENTS = (
    "MODEL_VERSION_CREATED",
    "MODEL_VERSION_TRANSITIONED_STAGE",
    "TRANSITION_REQUEST_CREATED",
    "COMMENT_CREATED",
    "REGISTERED_MODEL_CREATED",
    "MODEL_VERSION_TAG_SET",
    "MODEL_VERSION_TRANSITIONED_TO_STAGING",
    "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION",
    "MODEL_VERSION_TRANSITIONED_TO_ARCHIVED",
    "TRANSITION_REQUEST_TO_STAGING_CREATED",
    "TRANSITION_REQUEST_TO_PRODUCTION_CREATED",
    "TRANSITION_REQUEST_TO_ARCHIVED_CREATED",
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class Delivery:
    event: str
    body: bytes
    status: int | None


@dataclass
class Workspace:
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    webhooks: list[dict[str, Any]] = field(default_factory=list)


def sign(secret: str, body: bytes) -> str:
    """Databricks' X-Databricks-Signature, computed independently of shared/databricks.py."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class FakeDatabricks:
    def __init__(self, token: str) -> None:
        self.token = token
        self.down = False  # answer 503 to everything (a workspace outage)
        self.page_limit: int | None = None  # a server-side cap on every listing page
        # Runs the token may not read (403), as in an experiment its principal has no access to.
        self.forbidden_runs: set[str] = set()
        self.state = Workspace()
        self.calls: list[Call] = []
        self.deliveries: list[Delivery] = []
        self.lock = threading.RLock()
        self.port = free_port()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parsed = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = fake.dispatch(
                    self.command, parsed.path, params, raw, self.headers.get("Authorization")
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test set-up -----------------------------------------------------------------------
    def add_version(
        self,
        model: str,
        version: str,
        *,
        creator: str,
        metrics: dict[str, float] | None = None,
        run_started_days_ago: float = 1.0,
        stage: str = "None",
        with_run: bool = True,
    ) -> None:
        with self.lock:
            run_id = uuid.uuid4().hex if with_run else None
            if run_id:
                start = int((time.time() - run_started_days_ago * 86_400) * 1000)
                self.state.runs[run_id] = {
                    "info": {"run_id": run_id, "start_time": start, "status": "FINISHED"},
                    "data": {
                        "metrics": [
                            {"key": k, "value": v, "timestamp": start, "step": 0}
                            for k, v in (metrics or {}).items()
                        ],
                        "tags": [],
                    },
                }
            self.state.versions[(model, version)] = {
                "name": model,
                "version": version,
                "creation_timestamp": int(time.time() * 1000),
                "user_id": creator,
                "current_stage": stage,
                "description": "",
                "source": f"dbfs:/models/{model}/{version}",
                "status": "READY",
                **({"run_id": run_id} if run_id else {}),
            }

    def request_transition(
        self, model: str, version: str, stage: str, user: str, *, deliver: bool = True
    ) -> bytes:
        """A user asks for a transition: the request opens and the webhook fires (unless
        `deliver` is false: a webhook Databricks could not deliver)."""
        with self.lock:
            now = int(time.time() * 1000)
            mv = self.state.versions[(model, version)]
            self.state.requests.setdefault((model, version), []).append(
                {
                    "creation_timestamp": now,
                    "user_id": user,
                    "to_stage": stage,
                    "comment": "please",
                    "activity_type": "REQUESTED_TRANSITION",
                    "from_stage": mv["current_stage"],
                }
            )
            payload = self.payload(
                "TRANSITION_REQUEST_CREATED", model, version, stage, mv["current_stage"]
            )
        return self.fire(payload) if deliver else payload

    def move_outside(self, model: str, version: str, stage: str) -> bytes:
        """Someone with the right permission moves a version directly, without a request."""
        with self.lock:
            before = self._transition(model, version, stage, archive=False)
            payload = self.payload(
                "MODEL_VERSION_TRANSITIONED_STAGE", model, version, stage, before
            )
        return self.fire(payload)

    def run_of(self, model: str, version: str) -> str:
        with self.lock:
            return str(self.state.versions[(model, version)]["run_id"])

    def stage_of(self, model: str, version: str) -> str:
        with self.lock:
            return str(self.state.versions[(model, version)]["current_stage"])

    def open_requests(self, model: str, version: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.state.requests.get((model, version), []))

    def calls_to(self, suffix: str, model: str | None = None) -> list[Call]:
        with self.lock:
            return [
                c
                for c in self.calls
                if c.path.endswith(suffix)
                and (
                    model is None
                    or (c.body or {}).get("name") == model
                    or c.params.get("name") == model
                )
            ]

    @staticmethod
    def payload(event: str, model: str, version: str, to_stage: str, from_stage: str) -> bytes:
        return json.dumps(
            {
                "event": event,
                "webhook_id": "c5596721253c4b429368cf6f4341b88a",
                "event_timestamp": int(time.time() * 1000),
                "model_name": model,
                "version": version,
                "to_stage": to_stage,
                "from_stage": from_stage,
                "text": f"Registered model '{model}' version {version}: {event}",
            }
        ).encode()

    # -- webhooks out ----------------------------------------------------------------------
    def fire(self, body: bytes) -> bytes:
        """Deliver to every registered webhook subscribed to the event, in a thread."""
        event = json.loads(body)["event"]
        model = json.loads(body)["model_name"]
        with self.lock:
            hooks = [
                h
                for h in self.state.webhooks
                if event in h["events"] and h.get("model_name") in (None, model)
            ]
        for hook in hooks:
            threading.Thread(target=self._deliver, args=(hook, event, body), daemon=True).start()
        return body

    def _deliver(self, hook: dict[str, Any], event: str, body: bytes) -> None:
        spec = hook["http_url_spec"]
        headers = {"Content-Type": "application/json"}
        if spec.get("secret"):
            headers["X-Databricks-Signature"] = sign(spec["secret"], body)
        if spec.get("authorization"):
            headers["Authorization"] = spec["authorization"]
        try:
            status: int | None = requests.post(
                spec["url"], data=body, headers=headers, timeout=10
            ).status_code
        except requests.RequestException:
            status = None
        with self.lock:
            self.deliveries.append(Delivery(event, body, status))

    # -- the API ---------------------------------------------------------------------------
    def dispatch(
        self, method: str, path: str, params: dict[str, str], raw: bytes, auth: str | None
    ) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] | None = None
        if raw:
            try:
                loaded = json.loads(raw)
            except ValueError:
                return 400, {"error_code": "MALFORMED_REQUEST", "message": "invalid JSON"}
            body = loaded if isinstance(loaded, dict) else None
        with self.lock:
            self.calls.append(Call(method, path, params, body))
        if self.down:
            return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down for a test"}
        if auth != f"Bearer {self.token}":
            return 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}
        route = {
            ("GET", "/api/2.0/mlflow/model-versions/get"): self._get_version,
            ("GET", "/api/2.0/mlflow/model-versions/search"): self._search_versions,
            ("GET", "/api/2.0/mlflow/registered-models/list"): self._list_models,
            ("GET", "/api/2.0/mlflow/runs/get"): self._get_run,
            ("GET", "/api/2.0/mlflow/transition-requests/list"): self._list_requests,
            ("POST", "/api/2.0/mlflow/transition-requests/approve"): self._approve,
            ("POST", "/api/2.0/mlflow/transition-requests/reject"): self._reject,
            (
                "POST",
                "/api/2.0/mlflow/databricks/model-versions/transition-stage",
            ): self._transition_stage,
            ("POST", "/api/2.0/mlflow/registry-webhooks/create"): self._create_webhook,
            ("GET", "/api/2.0/mlflow/registry-webhooks/list"): self._list_webhooks,
        }.get((method, path))
        if route is None:
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API {method} {path}"}
        try:
            with self.lock:
                return 200, route(params, body or {})
        except ApiError as exc:
            return exc.status, {"error_code": exc.code, "message": exc.message}

    def _version(self, name: str, version: str) -> dict[str, Any]:
        mv = self.state.versions.get((name, version))
        if mv is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Model version {name} {version}")
        return mv

    def _get_version(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        name, version = _param(params, "name"), _param(params, "version")
        return {"model_version": dict(self._version(name, version))}

    def _search_versions(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        names = _names_in_filter(_param(params, "filter"))
        found = [dict(mv) for (n, _), mv in self.state.versions.items() if n in names]
        return self._page(params, "model_versions", found, default=10_000, maximum=10_000)

    def _list_models(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        names = sorted({n for n, _ in self.state.versions})
        models = [
            {
                "name": n,
                "creation_timestamp": min(
                    int(mv["creation_timestamp"])
                    for (m, _), mv in self.state.versions.items()
                    if m == n
                ),
            }
            for n in names
        ]
        return self._page(params, "registered_models", models, default=100, maximum=1000)

    def _page(
        self,
        params: dict[str, str],
        key: str,
        items: list[dict[str, Any]],
        *,
        default: int,
        maximum: int,
    ) -> dict[str, Any]:
        size = default
        if "max_results" in params:
            raw = params["max_results"]
            if not raw.lstrip("-").isdigit() or not 0 < int(raw) <= maximum:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"Invalid value {raw!r} for parameter 'max_results': at most {maximum}",
                )
            size = int(raw)
        if self.page_limit is not None:
            size = min(size, self.page_limit)
        start = 0
        if "page_token" in params:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(params["page_token"]))["offset"])
            except (ValueError, TypeError, KeyError):
                start = -1
            if start < 0:
                raise ApiError(400, "INVALID_PARAMETER_VALUE", "Invalid page token")
        answer: dict[str, Any] = {key: items[start : start + size]}
        if start + size < len(items):
            token = json.dumps({"offset": start + size}).encode()
            answer["next_page_token"] = base64.urlsafe_b64encode(token).decode()
        return answer

    def _get_run(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        if params.get("run_id") in self.forbidden_runs:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                f"User does not have permission 'View' on run {params['run_id']}",
            )
        run = self.state.runs.get(_param(params, "run_id"))
        if run is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "Run not found")
        return {"run": run}

    def _list_requests(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        name, version = _param(params, "name"), _param(params, "version")
        self._version(name, version)
        return {"requests": list(self.state.requests.get((name, version), []))}

    def _take_request(self, name: str, version: str, stage: str) -> dict[str, Any]:
        pending = self.state.requests.get((name, version), [])
        for request in pending:
            if request["to_stage"] == stage:
                pending.remove(request)
                return request
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Transition request to {stage} for {name} version {version} does not exist",
        )

    def _approve(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        name, version, stage = _body_str(body, "name"), _body_str(body, "version"), _stage(body)
        archive = _body_bool(body, "archive_existing_versions")
        comment = _body_str(body, "comment", required=False)
        self._version(name, version)
        self._take_request(name, version, stage)
        before = self._transition(name, version, stage, archive)
        self.fire(self.payload("MODEL_VERSION_TRANSITIONED_STAGE", name, version, stage, before))
        return {"activity": _activity("APPROVED_REQUEST", before, stage, comment)}

    def _reject(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        name, version, stage = _body_str(body, "name"), _body_str(body, "version"), _stage(body)
        comment = _body_str(body, "comment", required=False)
        self._version(name, version)
        request = self._take_request(name, version, stage)
        return {"activity": _activity("REJECTED_REQUEST", request["from_stage"], stage, comment)}

    def _transition_stage(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        name, version, stage = _body_str(body, "name"), _body_str(body, "version"), _stage(body)
        archive = _body_bool(body, "archive_existing_versions")
        _body_str(body, "comment", required=False)
        self._version(name, version)
        before = self._transition(name, version, stage, archive)
        self.fire(self.payload("MODEL_VERSION_TRANSITIONED_STAGE", name, version, stage, before))
        return {"model_version_databricks": dict(self._version(name, version))}

    def _transition(self, name: str, version: str, stage: str, archive: bool) -> str:
        mv = self._version(name, version)
        before = str(mv["current_stage"])
        if archive and stage in ("Staging", "Production"):
            for (n, v), other in self.state.versions.items():
                if n == name and v != version and other["current_stage"] == stage:
                    other["current_stage"] = "Archived"
        mv["current_stage"] = stage
        return before

    def _create_webhook(self, _: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        events = body.get("events")
        if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"invalid events {events!r}")
        spec = body.get("http_url_spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "http_url_spec.url is required")
        for key in ("secret", "authorization"):
            if key in spec and not isinstance(spec[key], str):
                raise ApiError(400, "INVALID_PARAMETER_VALUE", f"http_url_spec.{key}: a string")
        model = body.get("model_name")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "model_name must be a string")
        hook = {
            "id": uuid.uuid4().hex,
            "events": list(events),
            "status": body.get("status", "ACTIVE"),
            "http_url_spec": dict(spec),
            **({"model_name": model} if model else {}),
        }
        self.state.webhooks.append(hook)
        shown = {**hook, "http_url_spec": {"url": spec["url"]}}  # secrets are never returned
        return {"webhook": shown}

    def _list_webhooks(self, params: dict[str, str], _: dict[str, Any]) -> dict[str, Any]:
        model = params.get("model_name")
        hooks = [
            {**h, "http_url_spec": {"url": h["http_url_spec"]["url"]}}
            for h in self.state.webhooks
            if model is None or h.get("model_name") == model
        ]
        return {"webhooks": hooks}


def _names_in_filter(text: str) -> tuple[str, ...]:
    """The model names of a `name='...'` or `name IN (...)` filter, read as MLflow's parser reads
    them: the text between the quotes of `name='...'` as it is (no escape is undone), the list
    after IN as a Python literal (ast.literal_eval). Any other filter is refused."""
    text = text.strip()
    if text.startswith("name='") and text.endswith("'") and len(text) > len("name='"):
        return (text[len("name='") : -1],)
    head, _, rest = text.partition(" IN ")
    if head.strip() == "name" and rest.strip().startswith("("):
        try:
            parsed = ast.literal_eval(rest.strip())
        except (SyntaxError, ValueError):
            parsed = None
        names = parsed if isinstance(parsed, tuple) else (parsed,)
        if all(isinstance(n, str) for n in names):
            return tuple(str(n) for n in names)
    raise ApiError(400, "INVALID_PARAMETER_VALUE", f"unsupported filter {text!r}")


def _param(params: dict[str, str], key: str) -> str:
    if not params.get(key):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Missing required parameter '{key}'")
    return params[key]


def _body_str(body: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in body:
        if required:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Missing required field '{key}'")
        return ""
    if not isinstance(body[key], str):
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"Invalid value for '{key}': expected a string, got {type(body[key]).__name__}",
        )
    return str(body[key])


def _body_bool(body: dict[str, Any], key: str) -> bool:
    if key not in body:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Missing required field '{key}'")
    if not isinstance(body[key], bool):
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"Invalid value for '{key}': expected a boolean, got {type(body[key]).__name__}",
        )
    return bool(body[key])


def _stage(body: dict[str, Any]) -> str:
    stage = _body_str(body, "stage")
    if stage not in STAGES:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid stage {stage!r}")
    return stage


def _activity(kind: str, from_stage: str, to_stage: str, comment: str) -> dict[str, Any]:
    return {
        "activity_type": kind,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "comment": comment,
        "creation_timestamp": int(time.time() * 1000),
        "user_id": "mlflow-gate-service-principal",
    }
