"""Model names with quotes and backslashes: the search filter the gate builds for a model's
versions is read back by MLflow's own filter parser as exactly that name, the in-memory MLflow
and the fake workspace read filters as that parser does, and the holder of a stage is found
whatever the model is called (else `compare_to <stage>` passes against nobody)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_databricks import FakeDatabricks
from harness import free_port
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mlflow.utils.search_utils import SearchModelVersionUtils

from shared import tags
from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.ledger import Ledger
from shared.policy import Target, parse_policies
from shared.settings import DatabricksSettings, Settings
from worker import tasks
from worker.pipeline import Pipeline
from worker.registries import Registries, workspace
from worker.registries.databricks import DatabricksRegistry, service
from worker.registries.endpoints import name_filter
from worker.registries.memory import InMemoryMlflow, InMemoryRegistry, _Version, _version_filter
from worker.rest import RestClient

QUOTED = 'o\'brien\\model "x"'  # a quote, a backslash and double quotes
AWKWARD = [
    QUOTED,
    "o'brien",
    "back\\slash",
    "trailing\\",
    "'",
    '"',
    "both'\"",
    "a\\'b",
    "x' OR name='other",
    "name IN ('other')",
    "pct%_under",
    "new\nline",
    "é日本",
    "plain",
]
PRODUCTION = Target("Production", is_stage=True)
COMPARE = """
policies:
  - name: beat-production
    targets: [Production]
    rules:
      - compare_to: Production
        metric: validation_accuracy
"""

# Names as a registry may hold them: any text (MLflow's parser reads a whole filter string; it
# never sees a NUL byte from a query string, and names are not empty).
NAMES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1)


def mlflow_reads(filter_string: str) -> list[str]:
    """The model names MLflow's own parser reads from a `name` filter."""
    (clause,) = SearchModelVersionUtils.parse_search_filter(filter_string)
    assert (clause["type"], clause["key"]) == ("attribute", "name")
    value = clause["value"]
    return list(value) if clause["comparator"] == "IN" else [value]


@given(NAMES)
@settings(max_examples=400, deadline=None)
@example(QUOTED)
@example("a\\'b")
@example("x' OR name='other")
def test_mlflows_parser_reads_the_filter_back_as_exactly_the_name(name: str) -> None:
    assert mlflow_reads(name_filter(name)) == [name]


@pytest.mark.parametrize("name", AWKWARD)
def test_a_name_with_a_quote_or_backslash_is_an_in_list_any_other_a_plain_filter(name: str) -> None:
    if "'" in name or "\\" in name:
        assert name_filter(name) == f"name IN ({name!r})"
    else:
        assert name_filter(name) == f"name='{name}'"


@given(NAMES, st.sampled_from(["plain", "escaped", "in"]))
@settings(max_examples=300, deadline=None)
@example(QUOTED, "escaped")
@example("a\\'b", "plain")
def test_the_in_memory_mlflow_reads_a_name_filter_as_mlflow_does(name: str, form: str) -> None:
    # Given a filter in a form the gate sends now (IN), or sent before (escaped), or plain
    if form == "plain" and "'" in name:
        return  # not a filter at all: MLflow refuses it, as the in-memory MLflow does
    text = {
        "plain": f"name='{name}'",
        "escaped": "name='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'",
        "in": f"name IN ({name!r})",
    }[form]
    # Then the in-memory MLflow keeps the versions of the models MLflow would find
    read = set(mlflow_reads(text))
    keep = _version_filter(text)
    for candidate in {name, *read}:
        assert keep(_Version(candidate, "1", "", "", "")) is (candidate in read)


def test_the_in_memory_mlflow_finds_no_model_by_a_backslash_escaped_quote() -> None:
    # As a real MLflow server: `name='o\'brien'` looks for a name with a backslash in it.
    assert not _version_filter("name='o\\'brien'")(_Version("o'brien", "1", "", "", ""))
    assert _version_filter('name IN ("o\'brien")')(_Version("o'brien", "1", "", "", ""))


# --- open-source MLflow: the holder of a stage --------------------------------------------------


@pytest.mark.parametrize("name", AWKWARD)
def test_the_holder_of_a_stage_is_found_whatever_the_model_is_called(name: str) -> None:
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    mlflow.create_model(name)
    mlflow.create_model(name + "-other")  # a model whose name starts the same
    first, second = mlflow.create_version(name), mlflow.create_version(name)
    other = mlflow.create_version(name + "-other")
    for model, version in ((name, first), (name, second), (name + "-other", other)):
        registry.put(model, PRODUCTION, version, archive=False, note="")
    assert registry.holder(name, PRODUCTION) == second


def test_compare_to_a_stage_rejects_a_worse_candidate_of_a_model_named_with_quotes(
    sqlite_ledger: Ledger,
) -> None:
    # Given a model named with a quote, a backslash and double quotes, whose Production holder
    # has validation_accuracy 0.95
    mlflow = InMemoryMlflow()
    registry = InMemoryRegistry(mlflow)
    log = sqlite_ledger
    pipeline = Pipeline(Registries({RegistryKind.MLFLOW: registry}), parse_policies(COMPARE), log)
    mlflow.create_model(QUOTED)

    def request(accuracy: float) -> str:
        run = mlflow.create_run(metrics={"validation_accuracy": accuracy})
        version = mlflow.create_version(QUOTED, run_id=run)
        mlflow.set_version_tag(QUOTED, version, tags.REQUEST, "Production")
        event = GateEvent(f"evt-{version}", RegistryKind.MLFLOW, Origin.WEBHOOK, Kind.REQUEST,
                          QUOTED, version, "Production", 0.0, "test")  # fmt: skip
        pipeline.handle(event)
        return version

    holder = request(0.95)
    assert registry.holder(QUOTED, PRODUCTION) == holder
    # When a worse version asks for Production
    worse = request(0.90)
    # Then it is compared with the holder, and rejected
    found = registry.version(QUOTED, worse).tags
    assert found[tags.STATUS] == "rejected", found[tags.REASON]
    assert f"below current Production (version {holder}: 0.95)" in found[tags.REASON]
    assert registry.holder(QUOTED, PRODUCTION) == holder


# --- the Databricks workspace: the sweep and the holder -----------------------------------------

TOKEN = "dapi-names-token"
GOVERNED = parse_policies(
    """
policies:
  - name: everything-in-production
    targets: [Production]
    rules:
      - metric: accuracy
        min: 0.9
"""
)


@pytest.fixture
def fake() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks(TOKEN)
    try:
        yield server
    finally:
        server.close()


def databricks(fake: FakeDatabricks) -> DatabricksRegistry:
    settings = Settings(
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",  # no MLflow anywhere
        mlflow_timeout_seconds=2,
        databricks=DatabricksSettings(host=fake.url, token=TOKEN),
    )
    return workspace(settings)


def test_the_fake_workspace_reads_name_filters_as_mlflow_does(fake: FakeDatabricks) -> None:
    fake.add_version(QUOTED, "1", creator="alice")
    rest = RestClient(service(DatabricksSettings(host=fake.url, token=TOKEN), 2.0))
    search = "/api/2.0/mlflow/model-versions/search"
    escaped = "name='" + QUOTED.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assert rest.call("GET", search, params={"filter": escaped})["model_versions"] == []
    found = rest.call("GET", search, params={"filter": f"name IN ({QUOTED!r})"})
    assert [mv["name"] for mv in found["model_versions"]] == [QUOTED]


@pytest.mark.parametrize("name", [QUOTED, "o'brien", "back\\slash"])
def test_the_workspace_sweep_and_holder_find_a_model_named_with_quotes(
    fake: FakeDatabricks, name: str
) -> None:
    # Given a model named with quotes: version 1 in Production, version 2 asking for it
    fake.add_version(name, "1", creator="alice", metrics={"accuracy": 0.95}, stage="Production")
    fake.add_version(name, "2", creator="alice", metrics={"accuracy": 0.91})
    fake.request_transition(name, "2", "Production", user="bob", deliver=False)
    registry = databricks(fake)
    # Then the holder of Production is found
    assert registry.holder(name, PRODUCTION) == "1"
    # And the sweep finds the open request
    published: list[dict[str, object]] = []
    report = tasks._sweep_safely(registry, GOVERNED, lambda _: True, published.append)
    assert report == "Databricks sweep enqueued 1 events owed"
    assert [(e["model"], e["version"], e["target"]) for e in published] == [
        (name, "2", "Production")
    ]
