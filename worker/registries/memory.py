"""An in-memory MLflow registry, for the decision pipeline's unit tests.

`InMemoryMlflow` answers the MLflow REST calls the gate makes, from memory, as a `requests`
transport adapter: the gate's own REST client and MLflow registry run unchanged on top of it (a
fake at the HTTP boundary, passed in, never patched in). It behaves like MLflow where the gate
depends on it: JSON shapes, 404 RESOURCE_DOES_NOT_EXIST, stage names matched case-insensitively,
archiving on transition, paging, and the filters the gate sends. Faults are injected per endpoint
(`fail`, `fail_connection`) or per run (`forbid_run`), and every call is logged (`calls`).
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from shared.policy import STAGES
from shared.settings import Settings
from worker.registries.mlflow import MlflowRegistry, service
from worker.rest import RestClient

Json = dict[str, Any]
BASE_URL = "http://in-memory-mlflow"
API = "/api/2.0/mlflow"
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class MlflowError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class _Version:
    name: str
    version: str
    run_id: str
    description: str
    user_id: str
    stage: str = "None"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Model:
    name: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    versions: dict[str, _Version] = field(default_factory=dict)


@dataclass
class _Run:
    run_id: str
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int


class InMemoryMlflow(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, _Model] = {}
        self.runs: dict[str, _Run] = {}
        self.calls: list[tuple[str, str]] = []
        self.tag_keys_written: list[str] = []  # version tags set over HTTP, in order
        self._faults: dict[tuple[str, str], list[Exception]] = {}
        self._forbidden_runs: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._routes: dict[tuple[str, str], Callable[[Json], Json]] = {
            ("GET", f"{API}/registered-models/get"): self._get_model,
            ("GET", f"{API}/registered-models/search"): self._search_models,
            ("GET", f"{API}/model-versions/get"): self._get_version,
            ("GET", f"{API}/model-versions/search"): self._search_versions,
            ("GET", f"{API}/runs/get"): self._get_run,
            ("POST", f"{API}/registered-models/alias"): self._set_alias,
            ("DELETE", f"{API}/registered-models/alias"): self._delete_alias,
            ("POST", f"{API}/model-versions/transition-stage"): self._transition,
            ("POST", f"{API}/model-versions/set-tag"): self._set_version_tag,
            ("POST", f"{API}/registered-models/set-tag"): self._set_model_tag,
        }

    # -- building state directly (no HTTP) ------------------------------------------------
    def create_model(self, name: str, description: str = "") -> None:
        self.models[name] = _Model(name, description)

    def create_run(
        self,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        start_time_ms: int = 0,
    ) -> str:
        run_id = f"run{next(self._ids)}"
        self.runs[run_id] = _Run(run_id, dict(metrics or {}), dict(tags or {}), start_time_ms)
        return run_id

    def create_version(self, model: str, run_id: str = "", description: str = "") -> str:
        versions = self._model(model).versions
        number = str(len(versions) + 1)
        versions[number] = _Version(model, number, run_id, description, user_id="")
        return number

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._set_alias({"name": model, "alias": alias, "version": version})

    def set_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        self._version(model, version).tags[key] = value

    # -- faults and the call log ----------------------------------------------------------
    def fail(self, method: str, path: str, status: int, code: str, times: int = 1) -> None:
        error = MlflowError(status, code, f"injected {status} {code}")
        self._faults.setdefault((method, path), []).extend([error] * times)

    def forbid_run(self, run_id: str, status: int = 403) -> None:
        """Refuse the gate this run from now on, as MLflow's auth refuses a run in an experiment
        the gate's account may not read (403), or credentials it does not accept (401)."""
        self._forbidden_runs[run_id] = status

    def fail_connection(self, method: str, path: str, times: int = 1) -> None:
        error = requests.ConnectionError("injected: connection refused")
        self._faults.setdefault((method, path), []).extend([error] * times)

    def calls_to(self, suffix: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1].endswith(suffix)]

    def session(self) -> requests.Session:
        session = requests.Session()
        session.mount(BASE_URL, self)
        return session

    # -- the transport --------------------------------------------------------------------
    def send(
        self, request: requests.PreparedRequest, *_args: Any, **_kwargs: Any
    ) -> requests.Response:
        url = urlsplit(str(request.url))
        method, path = str(request.method), url.path
        self.calls.append((method, path))
        args: Json = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if request.body:
            args.update(json.loads(request.body))
        pending = self._faults.get((method, path))
        try:
            if pending:
                raise pending.pop(0)
            if (method, path) == ("GET", "/health"):
                return _response(request, 200, "OK")  # plain text, as MLflow answers
            route = self._routes.get((method, path))
            if route is None:
                raise MlflowError(404, "ENDPOINT_NOT_FOUND", f"no endpoint {method} {path}")
            return _response(request, 200, route(args))
        except MlflowError as exc:
            body = {"error_code": exc.code, "message": str(exc)}
            return _response(request, exc.status, body)

    def close(self) -> None:
        pass

    # -- handlers -------------------------------------------------------------------------
    def _model(self, name: str) -> _Model:
        if name not in self.models:
            raise MlflowError(
                404, "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found"
            )
        return self.models[name]

    def _version(self, name: str, version: str) -> _Version:
        found = self._model(name).versions.get(str(version))
        if found is None:
            message = f"Model Version (name={name}, version={version}) not found"
            raise MlflowError(404, NOT_FOUND, message)
        return found

    def _get_model(self, args: Json) -> Json:
        return {"registered_model": self._model_json(self._model(_arg(args, "name")))}

    def _get_version(self, args: Json) -> Json:
        return {
            "model_version": self._version_json(
                self._version(_arg(args, "name"), _arg(args, "version"))
            )
        }

    def _get_run(self, args: Json) -> Json:
        status = self._forbidden_runs.get(_arg(args, "run_id"))
        if status == 401:
            raise MlflowError(401, "UNAUTHENTICATED", "Unauthenticated")
        if status is not None:
            raise MlflowError(status, "PERMISSION_DENIED", "Permission denied")
        run = self.runs.get(_arg(args, "run_id"))
        if run is None:
            raise MlflowError(404, NOT_FOUND, f"Run '{args['run_id']}' not found")
        metrics = [
            {"key": k, "value": v, "timestamp": 0, "step": 0} for k, v in run.metrics.items()
        ]
        return {"run": {"info": {"run_id": run.run_id, "start_time": run.start_time,
                                 "status": "FINISHED", "lifecycle_stage": "active"},
                        "data": {"metrics": metrics, "tags": _pairs(run.tags)}}}  # fmt: skip

    def _search_models(self, args: Json) -> Json:
        models = [self._model_json(m) for m in sorted(self.models.values(), key=lambda m: m.name)]
        return _page(models, "registered_models", args)

    def _search_versions(self, args: Json) -> Json:
        keep = _version_filter(str(args.get("filter") or ""))
        found = [v for m in self.models.values() for v in m.versions.values() if keep(v)]
        return _page([self._version_json(v) for v in found], "model_versions", args)

    def _set_alias(self, args: Json) -> Json:
        version = self._version(_arg(args, "name"), _arg(args, "version"))
        self._model(version.name).aliases[_arg(args, "alias")] = version.version
        return {}

    def _delete_alias(self, args: Json) -> Json:
        self._model(_arg(args, "name")).aliases.pop(_arg(args, "alias"), None)
        return {}

    def _transition(self, args: Json) -> Json:
        version = self._version(_arg(args, "name"), _arg(args, "version"))
        stage = next((s for s in STAGES if s.lower() == _arg(args, "stage").lower()), None)
        if stage is None:
            raise MlflowError(
                400, "INVALID_PARAMETER_VALUE", f"Invalid Model Version stage: {args['stage']}"
            )
        if args.get("archive_existing_versions") and stage in ("Staging", "Production"):
            for other in self._model(version.name).versions.values():
                if other is not version and other.stage == stage:
                    other.stage = "Archived"
        version.stage = stage
        return {"model_version": self._version_json(version)}

    def _set_version_tag(self, args: Json) -> Json:
        version, key = self._version(_arg(args, "name"), _arg(args, "version")), _arg(args, "key")
        version.tags[key] = str(args.get("value", ""))
        self.tag_keys_written.append(key)
        return {}

    def _set_model_tag(self, args: Json) -> Json:
        self._model(_arg(args, "name")).tags[_arg(args, "key")] = str(args.get("value", ""))
        return {}

    def _model_json(self, model: _Model) -> Json:
        aliases = [{"alias": a, "version": v} for a, v in sorted(model.aliases.items())]
        return {"name": model.name, "description": model.description, "tags": _pairs(model.tags),
                "aliases": aliases}  # fmt: skip

    def _version_json(self, v: _Version) -> Json:
        aliases = [a for a, n in self._model(v.name).aliases.items() if n == v.version]
        return {"name": v.name, "version": v.version, "run_id": v.run_id, "user_id": v.user_id,
                "description": v.description, "current_stage": v.stage, "status": "READY",
                "tags": _pairs(v.tags), "aliases": aliases}  # fmt: skip


class InMemoryRegistry(MlflowRegistry):
    """The open-source MLflow registry, unchanged, over an in-memory MLflow."""

    def __init__(self, mlflow: InMemoryMlflow) -> None:
        # The service the gate builds from its settings (names, hints), over the in-memory one.
        settings = Settings(mlflow_tracking_uri=BASE_URL, mlflow_timeout_seconds=1.0)
        super().__init__(RestClient(service(settings), session=mlflow.session()))


# The filters the gate sends, read as MLflow reads them: clauses joined by AND, each one of
# name = '...' and tags.`key` LIKE '...' (the text between the quotes taken as it is: MLflow undoes
# no escapes in it), or name IN (...) (the parenthesised list read as a Python literal, as MLflow
# reads it, with ast.literal_eval).
_STRING = r"'(?:''|\\'|[^'])*'" + "|" + r'"(?:""|\\"|[^"])*"'  # sqlparse's string tokens
_CLAUSE = re.compile(
    rf"""\s*(?:name|tags\.`(?P<tag>[^`]+)`)\s*(?:
        (?P<op>=|LIKE)\s*(?P<string>{_STRING})
        | IN\s*(?P<list>\((?:[^()'"]|{_STRING})*\))
    )\s*(?:AND\s|$)""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def _version_filter(text: str) -> Callable[[_Version], bool]:
    tests: list[Callable[[_Version], bool]] = []
    text, position = text.strip(), 0
    while position < len(text):
        match = _CLAUSE.match(text, position)
        if match is None:
            raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"Invalid filter '{text}'")
        position = match.end()
        tests.append(_clause(match, text))
    return lambda v: all(t(v) for t in tests)


def _clause(match: re.Match[str], text: str) -> Callable[[_Version], bool]:
    tag = match["tag"]
    if match["list"] is not None:
        if tag is not None:
            raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"Invalid filter '{text}'")
        try:
            parsed = ast.literal_eval(match["list"])
        except (SyntaxError, ValueError):
            raise MlflowError(
                400,
                "INVALID_PARAMETER_VALUE",
                "While parsing a list in the query, expected a non-empty list of string "
                "values, but got ill-formed list.",
            ) from None
        names = parsed if isinstance(parsed, tuple) else (parsed,)
        if not all(isinstance(n, str) for n in names):
            raise MlflowError(400, "INVALID_PARAMETER_VALUE", f"Invalid filter '{text}'")
        return lambda v: v.name in names
    value = match["string"][1:-1]  # MLflow strips the quotes and nothing else
    if match["op"] == "=":
        return lambda v: (v.name if tag is None else v.tags.get(tag)) == value
    pattern = re.compile(re.escape(value).replace("%", ".*").replace("_", ".") + r"\Z", re.S)

    def like(v: _Version) -> bool:
        actual = v.name if tag is None else v.tags.get(tag)
        return actual is not None and pattern.match(actual) is not None

    return like


def _page(items: list[Json], key: str, args: Json) -> Json:
    size = int(args.get("max_results") or 100)
    start = int(args.get("page_token") or 0)
    body: Json = {key: items[start : start + size]}
    if start + size < len(items):
        body["next_page_token"] = str(start + size)
    return body


def _arg(args: Json, key: str) -> str:
    if args.get(key) in (None, ""):
        raise MlflowError(
            400, "INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{key}'"
        )
    return str(args[key])


def _pairs(items: Mapping[str, str]) -> list[Json]:
    return [{"key": k, "value": v} for k, v in items.items()]


def _response(
    request: requests.PreparedRequest, status: int, body: Json | str
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    text = body if isinstance(body, str) else json.dumps(body)
    kind = "text/plain" if isinstance(body, str) else "application/json"
    response._content = text.encode()
    response.headers = CaseInsensitiveDict({"Content-Type": kind})
    response.url = str(request.url)
    response.request = request
    response.reason = "OK" if status < 400 else "Error"
    return response
