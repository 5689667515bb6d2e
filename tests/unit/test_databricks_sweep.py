"""DatabricksRegistry.sweep against the fake workspace (tests/fake_databricks.py) over real HTTP:
the open transition requests of governed models are found and enqueued; a sweep event whose
request was decided meanwhile records nothing; the sweep task runs each registry's sweep on its
own."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import requests
from fake_databricks import FakeDatabricks
from harness import free_port, recent

from shared.deadletter import DeadLetterStore
from shared.errors import MlflowRequestError, MlflowUnavailable
from shared.events import GateEvent, Kind, Origin, RegistryKind, found_by_sweep
from shared.ledger import Ledger
from shared.policy import parse_policies
from shared.settings import DatabricksSettings, Settings
from worker import runtime, tasks
from worker.pipeline import Pipeline
from worker.registries import Registries, open_source, workspace
from worker.registries.databricks import MODELS_LIST, REQUESTS_REJECT, DatabricksRegistry

TOKEN = "dapi-sweep-token"
POLICY = """
policies:
  - name: fraud-production
    models: ["fraud-*"]
    targets: [Production]
    rules:
      - metric: accuracy
        min: 0.9
  - name: churn-staging
    models: [churn]
    targets: [Staging]
    rules:
      - metric: accuracy
        min: 0.5
  - name: aliases-only
    models: [ranker]
    targets: [champion]
    rules:
      - metric: accuracy
        min: 0.5
"""
POLICIES = parse_policies(POLICY)


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks(TOKEN)
    try:
        yield server
    finally:
        server.close()


def settings(fake: FakeDatabricks, token: str = TOKEN) -> Settings:
    return Settings(
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # no MLflow anywhere
        mlflow_timeout_seconds=2,
        databricks=DatabricksSettings(host=fake.url, token=token),
    )


def registry(fake: FakeDatabricks, token: str = TOKEN) -> DatabricksRegistry:
    return workspace(settings(fake, token))


def sweep(fake: FakeDatabricks) -> tuple[list[GateEvent], str]:
    """The sweep as the sweep task runs it: the events it published, and its report."""
    published: list[dict[str, Any]] = []
    report = tasks._sweep_safely(registry(fake), POLICIES, lambda _: True, published.append)
    return [GateEvent.from_dict(e) for e in published], report


def subjects(events: list[GateEvent]) -> list[tuple[str, str | None, str | None]]:
    return sorted((e.model, e.version, e.target) for e in events)


def searched(fake: FakeDatabricks) -> set[str]:
    """The models whose versions the sweep listed (model-versions/search filters by name)."""
    return {c.params["filter"] for c in fake.calls_to("model-versions/search")}


# --- what the sweep enqueues ---------------------------------------------------------------


def test_only_open_requests_to_governed_stages_of_governed_models_are_enqueued(
    fake: FakeDatabricks,
) -> None:
    add = fake.add_version
    add("fraud-a", "1", creator="alice", stage="Production")  # no request
    add("fraud-a", "2", creator="alice")
    fake.request_transition("fraud-a", "2", "Production", user="bob", deliver=False)
    add("fraud-a", "3", creator="alice", stage="Archived")  # Archived: skipped
    fake.request_transition("fraud-a", "3", "Production", user="bob", deliver=False)
    add("fraud-a", "4", creator="alice")  # Staging is not governed for fraud-*
    fake.request_transition("fraud-a", "4", "Staging", user="bob", deliver=False)
    add("fraud-a", "5", creator="alice")  # two open requests to one stage: one event
    fake.request_transition("fraud-a", "5", "Production", user="bob", deliver=False)
    fake.request_transition("fraud-a", "5", "Production", user="carol", deliver=False)
    add("fraud-a", "6", creator="alice")  # decided already: not open any more
    fake.request_transition("fraud-a", "6", "Production", user="bob", deliver=False)
    rejection = {"name": "fraud-a", "version": "6", "stage": "Production", "comment": "no"}
    registry(fake).rest.call("POST", REQUESTS_REJECT, json=rejection)
    add("churn", "1", creator="alice")
    fake.request_transition("churn", "1", "Staging", user="bob", deliver=False)
    add("churn", "2", creator="alice")  # Production is not governed for churn
    fake.request_transition("churn", "2", "Production", user="bob", deliver=False)
    add("ranker", "1", creator="alice")  # governed for an alias only: no stage to sweep
    fake.request_transition("ranker", "1", "Production", user="bob", deliver=False)
    add("other", "1", creator="alice")  # no policy at all
    fake.request_transition("other", "1", "Production", user="bob", deliver=False)
    fake.calls.clear()

    events, report = sweep(fake)

    assert subjects(events) == [
        ("churn", "1", "Staging"),
        ("fraud-a", "2", "Production"),
        ("fraud-a", "5", "Production"),
    ]
    assert report == "Databricks sweep enqueued 3 events owed"
    # 2 governed models looked at; no call at all for models no policy governs for a stage,
    # nor for Archived versions.
    assert searched(fake) == {"name='churn'", "name='fraud-a'"}
    listed = {(c.params["name"], c.params["version"]) for c in fake.calls_to("requests/list")}
    assert listed == {("fraud-a", v) for v in "12456"} | {("churn", "1"), ("churn", "2")}
    # 7 versions looked at: one call per governed version, plus the listings.
    assert len(fake.calls_to("requests/list")) == 7
    for event in events:
        assert event.registry is RegistryKind.DATABRICKS and event.origin is Origin.SWEEP
        assert event.kind is Kind.REQUEST
        assert event.event_id.startswith("sweep-") and event.from_stage == "None"
    assert len({e.event_id for e in events}) == 3


def test_every_page_of_models_and_versions_is_read(fake: FakeDatabricks) -> None:
    for m in range(5):
        for v in range(1, 4):
            fake.add_version(f"fraud-{m}", str(v), creator="alice")
            fake.request_transition(f"fraud-{m}", str(v), "Production", user="bob", deliver=False)
    fake.page_limit = 2
    events, _ = sweep(fake)
    assert len(events) == 15
    assert subjects(events) == sorted(
        (f"fraud-{m}", str(v), "Production") for m in range(5) for v in range(1, 4)
    )
    pages = fake.calls_to("registered-models/list")
    assert len(pages) == 3  # 2 + 2 + 1
    assert "page_token" not in pages[0].params and all("page_token" in c.params for c in pages[1:])
    assert all(c.params["max_results"] == "1000" for c in pages)
    assert len(fake.calls_to("model-versions/search")) == 10  # 2 pages for each of 5 models


def test_an_empty_workspace_costs_one_call(fake: FakeDatabricks) -> None:
    events, report = sweep(fake)
    assert events == [] and "enqueued 0" in report
    assert [c.path for c in fake.calls] == [MODELS_LIST]


def test_an_outage_or_a_bad_token_stops_the_sweep_with_its_error(fake: FakeDatabricks) -> None:
    fake.add_version("fraud-a", "1", creator="alice")
    with pytest.raises(MlflowRequestError, match="GATE_DATABRICKS_TOKEN"):
        list(registry(fake, token="wrong").sweep(POLICIES))
    fake.down = True
    with pytest.raises(MlflowUnavailable, match="Databricks answered 503"):
        list(registry(fake).sweep(POLICIES))


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (MODELS_LIST, {"max_results": "1001"}),
        (MODELS_LIST, {"max_results": "-1"}),
        (MODELS_LIST, {"max_results": "many"}),
        (MODELS_LIST, {"page_token": "not-a-token"}),
        ("/api/2.0/mlflow/model-versions/search", {"filter": "name='m'", "max_results": "10001"}),
        ("/api/2.0/mlflow/model-versions/search", {"filter": "name='m'", "page_token": "x"}),
    ],
)
def test_the_fake_refuses_bad_listing_parameters(
    fake: FakeDatabricks, path: str, params: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answer = requests.get(f"{fake.url}{path}", params=params, headers=headers, timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # and without the bearer token, 401 before anything else
    assert requests.get(f"{fake.url}{path}", params=params, timeout=5).status_code == 401


# --- the worker side: dispatch, and a request decided meanwhile -----------------------------


@pytest.fixture
def flow(fake: FakeDatabricks, sqlite_ledger: Ledger) -> tuple[Pipeline, Ledger]:
    log = sqlite_ledger
    # No MLflow anywhere: the open-source side must not be called for these events.
    registries = Registries(
        {
            RegistryKind.MLFLOW: open_source(settings(fake)),
            RegistryKind.DATABRICKS: registry(fake),
        }
    )
    return Pipeline(registries, POLICIES, log), log


def test_a_sweep_event_reaches_the_databricks_flow_and_is_decided(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    pipeline, log = flow
    fake.add_version("fraud-a", "1", creator="alice", metrics={"accuracy": 0.95})
    fake.request_transition("fraud-a", "1", "Production", user="bob", deliver=False)
    (event,) = sweep(fake)[0]
    assert "approved" in pipeline.handle(event)
    assert fake.stage_of("fraud-a", "1") == "Production"
    assert [e["outcome"] for e in recent(log, "fraud-a")] == ["approved"]
    assert [e["origin"] for e in recent(log, "fraud-a")] == ["sweep"]
    # The next sweep finds nothing open: it is decided once.
    assert sweep(fake)[0] == []


def test_a_sweep_event_whose_request_was_decided_meanwhile_records_nothing(
    fake: FakeDatabricks, flow: tuple[Pipeline, Ledger]
) -> None:
    from shared.databricks import parse_webhook

    pipeline, log = flow
    fake.add_version("fraud-a", "1", creator="alice", metrics={"accuracy": 0.95})
    body = fake.request_transition("fraud-a", "1", "Production", user="bob", deliver=False)
    (event,) = sweep(fake)[0]
    # The webhook's own event is decided first...
    webhook = parse_webhook(body, received_at=0.0)
    assert webhook is not None
    assert webhook.registry is RegistryKind.DATABRICKS and webhook.origin is Origin.WEBHOOK
    assert "approved" in pipeline.handle(webhook)
    # ...so the sweep's event finds no open request, and leaves no `skipped` entry.
    assert "decided meanwhile" in pipeline.handle(event)
    assert [e["outcome"] for e in recent(log, "fraud-a")] == ["approved"]
    assert len(fake.calls_to("transition-requests/approve")) == 1
    # The same webhook again (a redelivery) is already decided; another webhook event in the
    # same situation still records `skipped`.
    assert "already decided" in pipeline.handle(webhook)
    pipeline.handle(dataclasses.replace(webhook, event_id=f"{webhook.event_id}-again"))
    assert [e["outcome"] for e in recent(log, "fraud-a")] == ["skipped", "approved"]


# --- the sweep task ---------------------------------------------------------------------------


@pytest.fixture
def installed(
    fake: FakeDatabricks, monkeypatch: pytest.MonkeyPatch, sqlite_ledger: Ledger
) -> Iterator[list[dict[str, Any]]]:
    """A worker runtime on fakeredis and the fake workspace, with no MLflow server at all; what
    the tasks publish is collected."""
    config = settings(fake)
    client = fakeredis.FakeRedis()
    registries = Registries(
        {
            RegistryKind.MLFLOW: open_source(config),
            RegistryKind.DATABRICKS: workspace(config),
        }
    )
    rt = runtime.Runtime(config, POLICIES)
    rt._clients = runtime.Clients(
        pid=os.getpid(),
        redis=client,
        registries=registries,
        ledger=sqlite_ledger,
        pipeline=Pipeline(registries, POLICIES, sqlite_ledger),
        deadletters=DeadLetterStore(client),
    )
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks, "publisher", lambda app: published.append)
    monkeypatch.setattr(runtime, "_current", rt)
    yield published


def test_the_databricks_sweep_runs_when_the_open_source_one_fails(
    fake: FakeDatabricks, installed: list[dict[str, Any]]
) -> None:
    fake.add_version("fraud-a", "1", creator="alice")
    fake.request_transition("fraud-a", "1", "Production", user="bob", deliver=False)
    report = tasks.sweep()
    assert "MLflow sweep failed, trying again next interval: MlflowUnavailable" in report
    assert "Databricks sweep enqueued 1 events owed" in report
    assert [(e["registry"], e["origin"]) for e in installed] == [("databricks", "sweep")]


def test_the_open_source_sweep_runs_when_the_workspace_is_down(
    fake: FakeDatabricks, installed: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = runtime.current().clients.registries.get(RegistryKind.MLFLOW)
    owed = found_by_sweep(RegistryKind.MLFLOW, Kind.REQUEST, "m", "1", None)
    monkeypatch.setattr(mlflow, "sweep", lambda policies: iter([owed]))
    fake.down = True
    report = tasks.sweep()
    assert report.startswith(
        "MLflow sweep enqueued 1 events owed; Databricks sweep failed, trying again next interval"
    )
    assert "Databricks answered 503" in report
    assert installed == [owed.to_dict()]


def test_the_redrive_checks_the_workspace_for_the_sweep_events_too(
    fake: FakeDatabricks, installed: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def capture(store: Any, health: dict[str, Any], publish: Any, batch: int) -> str:
        seen.update(health)
        return "captured"

    with monkeypatch.context() as patched:
        patched.setattr(tasks, "redrive_dead_letters", capture)
        assert tasks.redrive() == "captured"
    assert seen[RegistryKind.DATABRICKS.value]() is True
    # The sweep's events and the webhooks' are both waited for on the workspace's health.
    store = runtime.current().clients.deadletters
    for origin in (Origin.SWEEP, Origin.WEBHOOK):
        owed = GateEvent(
            event_id=f"dbx-{origin.value}",
            registry=RegistryKind.DATABRICKS,
            origin=origin,
            kind=Kind.REQUEST,
            model="fraud-a",
            version="1",
            target="Production",
            received_at=0.0,
            webhook_event="TEST",
        )
        store.put(owed.to_dict(), MlflowUnavailable("Databricks answered 503"), 16)
    fake.down = True
    assert seen[RegistryKind.DATABRICKS.value]() is False
    assert "still unavailable: databricks (2 waiting)" in tasks.redrive()
    assert installed == []
    fake.down = False
    assert tasks.redrive().startswith("redrive: replayed 2")
    assert sorted(e["event_id"] for e in installed) == ["dbx-sweep", "dbx-webhook"]
