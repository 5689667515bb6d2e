"""shared.ledger against SQLite and a real PostgreSQL server: decisions, approvals, history,
filters, retention, and the one-open-approval rule."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from harness import free_port

from shared.errors import ConfigError
from shared.evaluation import Check
from shared.events import Origin, RegistryKind
from shared.ledger import (
    ActionState,
    DecisionRow,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    TargetKind,
)
from shared.ledger.schema import approvals
from shared.outcomes import Outcome

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
MLFLOW = RegistryKind.MLFLOW
DATABRICKS = RegistryKind.DATABRICKS


def row(**changes: Any) -> DecisionRow:
    fields: dict[str, Any] = {
        "decided_at": T0,
        "registry": MLFLOW,
        "model": "fraud-detector",
        "version": "3",
        "target": "champion",
        "target_kind": TargetKind.ALIAS,
        "outcome": Outcome.APPROVED,
        "reason": "Approved for alias 'champion': every check passed.",
        "event_id": "evt-1",
        "origin": Origin.WEBHOOK,
    }
    fields.update(changes)
    return DecisionRow(**fields)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- decisions ---------------------------------------------------------------------------------


def test_a_decision_reads_back_as_recorded(ledger: Ledger) -> None:
    check = Check(
        policy="production-quality",
        check="metric validation_accuracy",
        passed=False,
        actual=0.85,
        required=">= 0.9",
        message="validation_accuracy is 0.85, below the minimum 0.9",
        enforced=True,
    )
    original = row(
        decided_at=datetime(2026, 11, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        registry=DATABRICKS,
        target="Production",
        target_kind=TargetKind.STAGE,
        outcome=Outcome.REJECTED,
        reason="Rejected for stage 'Production': validation_accuracy is 0.85.",
        policies=("production-quality", "governance"),
        checks=(check,),
        facts={"metrics": {"validation_accuracy": 0.85}, "tags": ["a", "b"], "n": None},
        origin=Origin.SWEEP,
        requested_by="alice@example.com",
        acted_by="mlflow-gate",
        action_state=ActionState.PENDING,
    )
    decision_id = ledger.record(original)
    back = ledger.decision(decision_id)
    assert back is not None
    assert back.id == decision_id
    assert back.decided_at == T0 and back.decided_at.tzinfo == timezone.utc
    assert back.registry is DATABRICKS and back.target_kind is TargetKind.STAGE
    assert back.outcome is Outcome.REJECTED and back.origin is Origin.SWEEP
    assert back.checks == (check,)
    assert back.policies == ("production-quality", "governance")
    assert back.facts == {"metrics": {"validation_accuracy": 0.85}, "tags": ["a", "b"], "n": None}
    assert (back.requested_by, back.acted_by) == ("alice@example.com", "mlflow-gate")
    assert back.action_state is ActionState.PENDING and back.superseded_by is None
    assert ledger.decision(decision_id + 1000) is None


def test_plain_strings_are_accepted_and_checked(ledger: Ledger) -> None:
    fields: dict[str, Any] = {"registry": "mlflow", "outcome": "skipped", "origin": "replay"}
    decision_id = ledger.record(row(**fields, target_kind="alias", action_state=None))
    back = ledger.decision(decision_id)
    assert back is not None and back.outcome is Outcome.SKIPPED and back.origin is Origin.REPLAY
    with pytest.raises(ValueError, match="maybe"):
        row(outcome="maybe")


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        row(decided_at=datetime(2026, 11, 1, 12, 0))


def test_a_nan_metric_is_kept_as_text_and_unserialisable_facts_are_refused(ledger: Ledger) -> None:
    nan_check = Check("p", "metric loss", False, float("nan"), "<= 1", "loss is nan")
    decision_id = ledger.record(row(checks=(nan_check,), facts={"loss": float("inf")}))
    back = ledger.decision(decision_id)
    assert back is not None and back.checks[0].actual == "nan" and back.facts == {"loss": "inf"}
    with pytest.raises(TypeError, match="facts cannot be stored as JSON"):
        ledger.record(row(facts={"when": T0}))


def test_mark_done_finishes_the_action_once(ledger: Ledger) -> None:
    decision_id = ledger.record(row(action_state=ActionState.PENDING))
    ledger.mark_done(decision_id)
    ledger.mark_done(decision_id)  # idempotent
    back = ledger.decision(decision_id)
    assert back is not None and back.action_state is ActionState.DONE
    no_action = ledger.record(row(outcome=Outcome.REJECTED, action_state=None))
    with pytest.raises(LedgerError, match="calls for no action"):
        ledger.mark_done(no_action)
    with pytest.raises(LedgerError, match="no decision 999"):
        ledger.mark_done(999)


def test_supersede_links_a_decision_to_its_replacement(ledger: Ledger) -> None:
    first = ledger.record(row())
    second = ledger.record(row(decided_at=at(1), outcome=Outcome.ROLLED_BACK))
    ledger.supersede(first, by=second)
    back = ledger.decision(first)
    assert back is not None and back.superseded_by == second
    with pytest.raises(LedgerError, match="no decision 999"):
        ledger.supersede(first, by=999)
    with pytest.raises(LedgerError, match="no decision 999"):
        ledger.supersede(999, by=first)
    with pytest.raises(LedgerError, match="itself"):
        ledger.supersede(first, by=first)


# --- listing -----------------------------------------------------------------------------------


def test_decisions_come_newest_first_up_to_the_limit(ledger: Ledger) -> None:
    ids = [ledger.record(row(decided_at=at(m), version=str(m))) for m in (5, 1, 3, 2, 4)]
    assert [d.version for d in ledger.decisions()] == ["5", "4", "3", "2", "1"]
    assert [d.version for d in ledger.decisions(limit=2)] == ["5", "4"]
    assert ledger.decisions(limit=0) == []
    same_time = ledger.record(row(decided_at=at(5), version="5b"))  # ties: the later id first
    assert [d.id for d in ledger.decisions(limit=2)] == [same_time, ids[0]]


def test_filters_by_target_outcome_and_time(ledger: Ledger) -> None:
    ledger.record(row(decided_at=at(0), target="champion", outcome=Outcome.APPROVED))
    ledger.record(row(decided_at=at(10), target="champion", outcome=Outcome.REJECTED))
    ledger.record(row(decided_at=at(20), target="Production", target_kind=TargetKind.STAGE))
    ledger.record(row(decided_at=at(30), outcome=Outcome.VIOLATION))

    def times(**filters: Any) -> list[datetime]:
        return [d.decided_at for d in ledger.decisions(**filters)]

    assert times(target="champion") == [at(30), at(10), at(0)]
    assert times(target="Production") == [at(20)]
    assert times(outcome=Outcome.REJECTED) == [at(10)]
    assert times(since=at(10)) == [at(30), at(20), at(10)]  # inclusive
    assert times(since=at(10).astimezone(timezone(timedelta(hours=-5)))) == times(since=at(10))
    assert times(target="champion", outcome=Outcome.APPROVED, since=at(5)) == []
    assert times(target="nobody") == []


NAMES = [
    "fraud-detector",
    "fraud-detector-v2",
    "Fraud-Detector",
    "churn",
    "100%_sure",
    "100xxsure",
    "o'brien's model",
    r"back\slash",
    "under_score",
    "underXscore",
    "[bracketed]",
]


@pytest.mark.parametrize(
    ("glob", "expected"),
    [
        ("fraud-*", {"fraud-detector", "fraud-detector-v2"}),
        ("*detector", {"fraud-detector"}),
        ("FRAUD-*", set()),  # case-sensitive, on SQLite too
        ("Fraud-*", {"Fraud-Detector"}),
        ("100%_sure", {"100%_sure"}),  # % and _ are plain characters in a glob
        ("100*sure", {"100%_sure", "100xxsure"}),
        ("o'brien's model", {"o'brien's model"}),
        ("o'*", {"o'brien's model"}),
        (r"back\slash", {r"back\slash"}),
        (r"back\*", {r"back\slash"}),
        ("under_score", {"under_score"}),
        ("under?score", {"under_score", "underXscore"}),
        ("[cf]*", {"churn", "fraud-detector", "fraud-detector-v2"}),
        ("[!cf1ob[uU]*", {"Fraud-Detector"}),
        ("[[]bracketed]", {"[bracketed]"}),
        ("[bracketed]", set()),  # a class of one character
        ("*", set(NAMES)),
        ("nothing*", set()),
    ],
)
def test_model_globs_match_as_fnmatch_does(ledger: Ledger, glob: str, expected: set[str]) -> None:
    for minute, name in enumerate(NAMES):
        ledger.record(row(decided_at=at(minute), model=name))
    assert {d.model for d in ledger.decisions(model_glob=glob, limit=100)} == expected


def test_the_limit_counts_only_the_names_the_glob_matches(ledger: Ledger) -> None:
    for minute in range(3):
        ledger.record(row(decided_at=at(minute), model="fraud-a", version=str(minute)))
    for minute in range(3, 150):  # newer, and LIKE 'fraud-%' matches them on SQLite
        ledger.record(row(decided_at=at(minute), model="FRAUD-B"))
    found = ledger.decisions(model_glob="fraud-*", limit=2)
    assert [(d.model, d.version) for d in found] == [("fraud-a", "2"), ("fraud-a", "1")]


def test_pages_until_and_several_outcomes(ledger: Ledger) -> None:
    for minute in range(7):
        outcome = Outcome.REJECTED if minute % 2 else Outcome.APPROVED
        ledger.record(row(decided_at=at(minute), version=str(minute), outcome=outcome))
    ledger.record(row(decided_at=at(9), model="churn", version="9"))

    def versions(**filters: Any) -> list[str]:
        return [d.version for d in ledger.decisions(**filters)]

    assert versions(limit=3) == ["9", "6", "5"]
    assert versions(limit=3, offset=3) == ["4", "3", "2"]
    assert versions(limit=3, offset=6) == ["1", "0"]
    assert versions(limit=3, offset=99) == []
    assert versions(until=at(5)) == ["4", "3", "2", "1", "0"]  # exclusive
    assert versions(outcomes=[Outcome.REJECTED]) == ["5", "3", "1"]
    assert versions(outcomes=[Outcome.REJECTED, Outcome.APPROVED], limit=2) == ["9", "6"]
    # A glob pages over the names it matches only.
    assert versions(model_glob="fraud-*", limit=2, offset=1) == ["5", "4"]
    assert versions(model="churn") == ["9"]
    assert versions(model="fraud-*") == []  # a name, not a glob
    assert ledger.models() == ["churn", "fraud-detector"]
    assert ledger.targets("churn") == [(MLFLOW, "champion")]


# --- approvals ---------------------------------------------------------------------------------


def approve(ledger: Ledger, version: str, minutes: float, **changes: Any) -> int:
    decision_id = ledger.record(row(decided_at=at(minutes), version=version, **changes))
    registry = changes.get("registry", MLFLOW)
    target = changes.get("target", "champion")
    ledger.approve(registry, "fraud-detector", target, version, decision_id, at(minutes))
    return decision_id


def test_an_approval_replaces_the_previous_holder(ledger: Ledger) -> None:
    assert ledger.approved_version(MLFLOW, "fraud-detector", "champion") is None
    first = approve(ledger, "3", 0, requested_by="alice", acted_by="gate")
    second = approve(ledger, "4", 10, reason="Approved v4.", requested_by="bob")
    assert ledger.approved_version(MLFLOW, "fraud-detector", "champion") == "4"
    assert ledger.is_approved(MLFLOW, "fraud-detector", "champion", "4")
    assert not ledger.is_approved(MLFLOW, "fraud-detector", "champion", "3")
    newest, oldest = ledger.history(MLFLOW, "fraud-detector", "champion")
    assert (newest.version, newest.approved_at, newest.ended_at) == ("4", at(10), None)
    assert newest.current and newest.decision_id == second
    assert (newest.reason, newest.requested_by, newest.acted_by) == ("Approved v4.", "bob", None)
    assert (oldest.version, oldest.approved_at, oldest.ended_at) == ("3", at(0), at(10))
    assert oldest.ended_reason == "replaced by version 4" and not oldest.current
    assert (oldest.decision_id, oldest.requested_by, oldest.acted_by) == (first, "alice", "gate")


def test_approving_the_holder_again_changes_nothing(ledger: Ledger) -> None:
    first = approve(ledger, "3", 0)
    again = ledger.record(row(decided_at=at(5)))
    ledger.approve(MLFLOW, "fraud-detector", "champion", "3", again, at(5))
    [tenure] = ledger.history(MLFLOW, "fraud-detector", "champion")
    assert (tenure.version, tenure.approved_at, tenure.decision_id) == ("3", at(0), first)


def test_an_approval_needs_a_recorded_decision(ledger: Ledger) -> None:
    approve(ledger, "3", 0)
    with pytest.raises(LedgerError, match="no decision 999"):
        ledger.approve(MLFLOW, "fraud-detector", "champion", "4", 999, at(1))
    assert ledger.approved_version(MLFLOW, "fraud-detector", "champion") == "3"  # untouched


def test_ending_an_approval_leaves_the_target_to_nobody(ledger: Ledger) -> None:
    approve(ledger, "3", 0)
    ended = ledger.end_approval(MLFLOW, "fraud-detector", "champion", "rolled back: bad", at(5))
    assert ended == "3"
    assert ledger.approved_version(MLFLOW, "fraud-detector", "champion") is None
    assert ledger.end_approval(MLFLOW, "fraud-detector", "champion", "again", at(6)) is None
    approve(ledger, "2", 10)
    newest, oldest = ledger.history(MLFLOW, "fraud-detector", "champion")
    assert (newest.version, newest.ended_at) == ("2", None)
    assert (oldest.version, oldest.ended_at, oldest.ended_reason) == (
        "3",
        at(5),
        "rolled back: bad",
    )


def test_registries_and_targets_are_kept_apart(ledger: Ledger) -> None:
    approve(ledger, "3", 0)
    approve(ledger, "7", 1, registry=DATABRICKS)
    approve(ledger, "5", 2, target="challenger")
    assert ledger.approved_version(MLFLOW, "fraud-detector", "champion") == "3"
    assert ledger.approved_version(DATABRICKS, "fraud-detector", "champion") == "7"
    assert ledger.approved_version(MLFLOW, "fraud-detector", "challenger") == "5"
    assert ledger.approved_version(MLFLOW, "other-model", "champion") is None
    everywhere = ledger.history(None, "fraud-detector", "champion")
    assert [(t.registry, t.version) for t in everywhere] == [(DATABRICKS, "7"), (MLFLOW, "3")]
    assert [t.version for t in ledger.history(MLFLOW, "fraud-detector", "champion")] == ["3"]
    assert ledger.history(None, "fraud-detector", "Production") == []


def test_the_database_refuses_a_second_open_approval(ledger: Ledger) -> None:
    decision_id = approve(ledger, "3", 0)
    with pytest.raises(sa.exc.IntegrityError), ledger.engine.begin() as conn:
        conn.execute(
            sa.insert(approvals).values(
                registry="mlflow",
                model="fraud-detector",
                target="champion",
                version="4",
                decision_id=decision_id,
                approved_at=at(1),
            )
        )
    with ledger.engine.begin() as conn:  # an ended one is fine
        conn.execute(
            sa.insert(approvals).values(
                registry="mlflow",
                model="fraud-detector",
                target="champion",
                version="2",
                decision_id=decision_id,
                approved_at=at(-10),
                ended_at=at(-5),
            )
        )


def test_concurrent_approvals_leave_exactly_one_open(ledger_url: str, ledger: Ledger) -> None:
    """Eight processes' worth of ledgers (one engine each) approve different versions of the
    same target at once: the last one holds it, every other approval is closed."""
    decision_ids = [ledger.record(row(version=str(v))) for v in range(8)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def approve_one(version: int) -> None:
        with Ledger(ledger_url) as own:
            barrier.wait()
            try:
                for attempt in range(3):
                    own.approve(
                        MLFLOW,
                        "fraud-detector",
                        "champion",
                        str(version),
                        decision_ids[version],
                        at(version * 10 + attempt),
                    )
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=approve_one, args=(v,)) for v in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    history = ledger.history(MLFLOW, "fraud-detector", "champion")
    open_ones = [t for t in history if t.ended_at is None]
    assert len(open_ones) == 1
    assert open_ones[0].version == ledger.approved_version(MLFLOW, "fraud-detector", "champion")
    closed = [t for t in history if t.ended_at is not None]
    assert closed and all(str(t.ended_reason).startswith("replaced by version") for t in closed)


# --- retention ---------------------------------------------------------------------------------


def test_prune_deletes_what_ended_before_the_cutoff(ledger: Ledger) -> None:
    holder_since_long_ago = approve(ledger, "1", 0, target="Production")  # still holds it
    old_rejection = ledger.record(row(decided_at=at(1), outcome=Outcome.REJECTED))
    replaced_long_ago = approve(ledger, "2", 2)  # replaced at minute 3, before the cutoff
    replaced_lately = approve(ledger, "3", 3)  # replaced at minute 200, after the cutoff
    superseder = ledger.record(row(decided_at=at(4), outcome=Outcome.ROLLED_BACK))
    ledger.supersede(holder_since_long_ago, by=superseder)
    recent = ledger.record(row(decided_at=at(150), outcome=Outcome.REJECTED))
    current = approve(ledger, "4", 200)
    cutoff = at(100)

    assert ledger.prune(cutoff, dry_run=True) == 3
    assert len(ledger.decisions(limit=100)) == 7  # a dry run deletes nothing

    assert ledger.prune(cutoff) == 3
    left = {d.id for d in ledger.decisions(limit=100)}
    assert left == {holder_since_long_ago, replaced_lately, recent, current}
    assert not {old_rejection, replaced_long_ago, superseder} & left
    holder = ledger.decision(holder_since_long_ago)
    assert holder is not None and holder.superseded_by is None  # its superseder went
    assert [t.version for t in ledger.history(MLFLOW, "fraud-detector", "champion")] == ["4", "3"]
    assert ledger.approved_version(MLFLOW, "fraud-detector", "Production") == "1"
    assert ledger.prune(cutoff) == 0


# --- schema and failures -----------------------------------------------------------------------


def test_upgrade_from_empty_then_again_is_a_no_op(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        assert ledger.revision() is None
        with pytest.raises(LedgerError, match="no schema yet: run `mlflow-gate db upgrade`"):
            ledger.check_current()
        with pytest.raises(LedgerError, match=r"no tables yet.*mlflow-gate db upgrade"):
            ledger.decisions()
        head = ledger.upgrade()
        decision_id = ledger.record(row())
        assert ledger.upgrade() == head == ledger.revision() == ledger.check_current()
        assert [d.id for d in ledger.decisions()] == [decision_id]


def test_a_ledger_built_from_an_engine_is_not_disposed_by_it(ledger_url: str) -> None:
    engine = sa.create_engine(ledger_url)
    try:
        with Ledger(engine) as ledger:
            ledger.upgrade()
            ledger.record(row())
        with Ledger(engine) as again:  # foreign keys are on for SQLite here too
            with pytest.raises(LedgerError, match="no decision 999"):
                again.approve(MLFLOW, "m", "champion", "1", 999, T0)
            assert len(again.decisions()) == 1
    finally:
        engine.dispose()


def test_the_sqlite_folder_is_created(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'ledger.db'}"
    with Ledger(url) as ledger:
        ledger.upgrade()
    assert (tmp_path / "deep" / "er" / "ledger.db").is_file()


def test_an_unusable_sqlite_path_says_what_to_check(tmp_path: Any) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LedgerUnavailable, match="check GATE_DATABASE_URL"):
        Ledger(f"sqlite:///{tmp_path / 'file' / 'ledger.db'}").upgrade()


def test_an_unparseable_url_names_the_variable_without_the_password() -> None:
    with pytest.raises(ConfigError, match="GATE_DATABASE_URL") as excinfo:
        Ledger("postgres://gate:hunter2@db/gate")
    assert "hunter2" not in str(excinfo.value) and "***" in str(excinfo.value)


def test_a_refused_password_is_not_shown(postgres_server: Any) -> None:
    postgres_server.create_database("ledger_badpw")
    url = postgres_server.url("ledger_badpw", password="wrong-hunter2")
    with Ledger(url) as ledger, pytest.raises(LedgerUnavailable) as excinfo:
        ledger.upgrade()
    message = str(excinfo.value)
    assert "wrong-hunter2" not in message and "gate:***@" in message
    assert "password authentication failed" in message and "check GATE_DATABASE_URL" in message
    assert "wrong-hunter2" not in repr(ledger)
    postgres_server.drop_database("ledger_badpw")


def test_a_server_that_does_not_answer_says_what_to_check() -> None:
    url = f"postgresql+psycopg2://gate:hunter2@127.0.0.1:{free_port()}/gate"
    with Ledger(url) as ledger, pytest.raises(LedgerUnavailable) as excinfo:
        ledger.revision()
    assert "did not answer" in str(excinfo.value) and "hunter2" not in str(excinfo.value)


# --- what the pipeline asks: an event's decisions, the pending one, the fence -----------------


def test_the_decisions_of_an_event_come_back_oldest_first(ledger: Ledger) -> None:
    first = ledger.record(row(event_id="evt-9", outcome=Outcome.APPROVED))
    second = ledger.record(row(event_id="evt-9", outcome=Outcome.ROLLED_BACK))
    ledger.record(row(event_id="evt-other"))
    assert [d.id for d in ledger.for_event("evt-9")] == [first, second]
    assert ledger.for_event("evt-never") == []


def test_the_pending_decision_of_a_target_is_the_newest_not_superseded(ledger: Ledger) -> None:
    pending = ActionState.PENDING
    older = ledger.record(row(version="2", action_state=pending))
    newer = ledger.record(row(version="3", action_state=pending))
    ledger.record(row(version="4", target="challenger", action_state=pending))
    found = ledger.pending(MLFLOW, "fraud-detector", "champion")
    assert found is not None and found.id == newer
    ledger.mark_done(newer, "Approved; alias 'champion' now points to version 3.")
    found = ledger.pending(MLFLOW, "fraud-detector", "champion")
    assert found is not None and found.id == older
    done = ledger.decision(newer)
    assert done is not None and done.reason.endswith("now points to version 3.")
    ledger.supersede(older, by=newer)
    assert ledger.pending(MLFLOW, "fraud-detector", "champion") is None


def test_a_newer_acting_decision_on_the_same_target_fences_an_older_one(ledger: Ledger) -> None:
    v2 = ledger.record(row(version="2", action_state=ActionState.PENDING))
    ledger.record(row(version="5", outcome=Outcome.SKIPPED))  # acts on nothing: no fence
    ledger.record(row(version="6", target="challenger", action_state=ActionState.DONE))
    older = ledger.decision(v2)
    assert older is not None and ledger.newer_action(older) is None
    v3 = ledger.record(row(version="3", action_state=ActionState.DONE))
    fence = ledger.newer_action(older)
    assert fence is not None and fence.id == v3


def test_replaced_approvals_stand_and_revoked_ones_do_not(ledger: Ledger) -> None:
    for minute, version in enumerate(("1", "2", "3")):
        decision = ledger.record(row(version=version, target="Production"))
        ledger.approve(MLFLOW, "fraud-detector", "Production", version, decision, at(minute))
    assert ledger.standing(MLFLOW, "fraud-detector", "Production") == {"1", "2", "3"}
    assert ledger.end_approval(MLFLOW, "fraud-detector", "Production", "rolled back", at(9)) == "3"
    assert ledger.standing(MLFLOW, "fraud-detector", "Production") == {"1", "2"}
    assert ledger.standing(DATABRICKS, "fraud-detector", "Production") == set()
