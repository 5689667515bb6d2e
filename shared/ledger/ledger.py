"""The gate's system of record: every decision, and which version the gate approved for each
target, with history.

One Ledger per process (it holds a connection pool); build it after forking. Every method is
one transaction. Times are aware datetimes, given back in UTC.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from shared import database_url
from shared.events import RegistryKind
from shared.ledger import engine as engines
from shared.ledger import migrate
from shared.ledger.errors import LedgerError
from shared.ledger.globs import ESCAPE, like_pattern, matches
from shared.ledger.records import (
    ActionState,
    Asked,
    DecisionRow,
    RecordedDecision,
    Tenure,
    Verdict,
    Vote,
    utc,
)
from shared.ledger.rows import (
    asked_from_row,
    decision_from_row,
    decision_values,
    tenure_from_row,
    vote_from_row,
)
from shared.ledger.schema import approvals, decisions, requests, votes
from shared.outcomes import Outcome

log = logging.getLogger(__name__)

_MOVES_NOTHING = (Outcome.PENDING_REVIEW.value, Outcome.SUPERSEDED.value)

_APPROVE_ATTEMPTS = 3
_STANDING = (
    ActionState.PENDING.value,
    ActionState.DONE.value,
)  # decisions that fence others  # two approvals racing for the same target: the loser tries again


class Ledger:
    def __init__(self, source: str | URL | Engine) -> None:
        """From a GATE_DATABASE_URL (the Ledger owns its engine: `close()` disposes of it) or
        from an Engine the caller owns."""
        if isinstance(source, Engine):
            self.engine = source
            self._owns_engine = False
            engines.prepare(source)
        else:
            self.engine = engines.create(source)
            self._owns_engine = True
        self.url: URL = self.engine.url
        self._writer = self.engine.execution_options(**{engines.WRITE: True})

    def __repr__(self) -> str:
        return f"Ledger({self.shown_url})"

    @property
    def shown_url(self) -> str:
        """The database URL with its password hidden, for messages and logs."""
        return database_url.hide_password(self.url)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- schema ---------------------------------------------------------------------------

    def upgrade(self) -> str:
        """Apply the migrations up to head (a no-op when there already); return the revision."""
        with engines.guarded(self.url):
            before = migrate.current(self.engine)
            reached = migrate.upgrade(self.engine)
        if reached != before:
            log.info("ledger %s upgraded from %s to %s", self.shown_url, before or "empty", reached)
        return reached

    def revision(self) -> str | None:
        """The database's schema revision; None before the first upgrade."""
        with engines.guarded(self.url):
            return migrate.current(self.engine)

    def check_current(self) -> str:
        """The revision, if it is the one this code expects; a LedgerError saying what to do if
        not. For processes that use the ledger without migrating it (the audit commands)."""
        found, expected = self.revision(), migrate.head()
        if found == expected:
            return found
        if found is None:
            raise LedgerError(
                f"the ledger at {self.shown_url} has no schema yet: run `mlflow-gate db upgrade` "
                "(the worker also does at start)"
            )
        if found not in {rev for _, rev in migrate.revisions()}:
            raise LedgerError(
                f"the ledger at {self.shown_url} is at revision {found}, written by a newer "
                f"mlflow-gate (this one knows up to {expected}); upgrade mlflow-gate"
            )
        raise LedgerError(
            f"the ledger at {self.shown_url} is at revision {found}, this mlflow-gate expects "
            f"{expected}: run `mlflow-gate db upgrade`"
        )

    # --- decisions --------------------------------------------------------------------------

    def record(self, decision: DecisionRow) -> int:
        """Store `decision`; return its id."""
        values = decision_values(decision)
        with self._write() as conn:
            return _new_id(conn.execute(sa.insert(decisions).values(**values)))

    def decision(self, decision_id: int) -> RecordedDecision | None:
        with self._read() as conn:
            row = conn.execute(sa.select(decisions).where(decisions.c.id == decision_id)).first()
        return decision_from_row(row._mapping) if row is not None else None

    def mark_done(self, decision_id: int, reason: str | None = None) -> None:
        """The gate's action on the registry for this decision is done (idempotent); `reason`,
        if given, replaces the recorded one (it then says what was done)."""
        values: dict[str, Any] = {"action_state": ActionState.DONE.value}
        if reason is not None:
            values["reason"] = reason
        with self._write() as conn:
            done = conn.execute(
                sa.update(decisions)
                .where(decisions.c.id == decision_id, decisions.c.action_state.is_not(None))
                .values(**values)
            )
            if done.rowcount == 0:
                self._require_decision(conn, decision_id)
                raise LedgerError(f"decision {decision_id} calls for no action on the registry")

    def mark_failed(self, decision_id: int, reason: str) -> None:
        """The gate's action for this decision failed for good (`reason` says why and what to
        do); a replay of its event decides again."""
        with self._write() as conn:
            failed = conn.execute(
                sa.update(decisions)
                .where(decisions.c.id == decision_id, decisions.c.action_state.is_not(None))
                .values(action_state=ActionState.FAILED.value, reason=reason)
            )
            if failed.rowcount == 0:
                self._require_decision(conn, decision_id)
                raise LedgerError(f"decision {decision_id} calls for no action on the registry")

    def supersede(self, decision_id: int, by: int) -> None:
        """Decision `decision_id` is replaced by the later decision `by`."""
        if decision_id == by:
            raise LedgerError(f"decision {decision_id} cannot supersede itself")
        with self._write() as conn:
            self._require_decision(conn, by)
            changed = conn.execute(
                sa.update(decisions).where(decisions.c.id == decision_id).values(superseded_by=by)
            )
            if changed.rowcount == 0:
                self._require_decision(conn, decision_id)

    def for_event(self, event_id: str) -> list[RecordedDecision]:
        """The decisions taken on event `event_id`, oldest first."""
        query = sa.select(decisions).where(decisions.c.event_id == event_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(decisions.c.id)).all()
        return [decision_from_row(row._mapping) for row in rows]

    def decided(self, registry: RegistryKind, model: str, version: str, target: str) -> bool:
        """Whether the gate decided on `version` for `target` (a decision that failed for good
        does not count: a replay decides again)."""
        query = sa.select(decisions.c.id).where(
            *_about(RegistryKind(registry), model, target),
            decisions.c.version == version,
            sa.or_(
                decisions.c.action_state.is_(None),
                decisions.c.action_state != ActionState.FAILED.value,
            ),
        )
        with self._read() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def latest(
        self, registry: RegistryKind, model: str, version: str, target: str
    ) -> RecordedDecision | None:
        """The newest decision on `version` for `target`."""
        return self._newest(
            *_about(RegistryKind(registry), model, target), decisions.c.version == version
        )

    def pending(self, registry: RegistryKind, model: str, target: str) -> RecordedDecision | None:
        """The newest decision on `target` whose action on the registry is not done yet and
        that nothing superseded: what a retry (or the next decision there) must finish first."""
        return self._newest(
            *_about(RegistryKind(registry), model, target),
            decisions.c.action_state == ActionState.PENDING.value,
            decisions.c.superseded_by.is_(None),
        )

    def newer_action(self, decision: RecordedDecision) -> RecordedDecision | None:
        """The newest decision taken after `decision` on the same target that acts on the
        registry: the fence. A decision with a newer one must not act any more."""
        return self._newest(
            *_about(decision.registry, decision.model, decision.target),
            decisions.c.id > decision.id,
            decisions.c.action_state.in_(_STANDING),
            # A review asked for, or superseded, moves nothing: it must not stop an earlier
            # decision's action.
            decisions.c.outcome.notin_(_MOVES_NOTHING),
        )

    def _newest(self, *where: sa.ColumnElement[bool]) -> RecordedDecision | None:
        query = sa.select(decisions).where(*where).order_by(decisions.c.id.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(query).first()
        return decision_from_row(row._mapping) if row is not None else None

    def decisions(
        self,
        model_glob: str | None = None,
        target: str | None = None,
        outcome: Outcome | None = None,
        since: datetime | None = None,
        limit: int = 50,
        *,
        until: datetime | None = None,
        offset: int = 0,
        outcomes: Sequence[Outcome] | None = None,
        model: str | None = None,
    ) -> list[RecordedDecision]:
        """Decisions newest first: on the model named `model`, on models matching `model_glob`
        (fnmatch, case-sensitive), for `target`, with `outcome` (or any of `outcomes`), decided
        at or after `since` and before `until`; the first `offset` of them skipped (paging),
        then at most `limit`."""
        if limit <= 0:
            return []
        offset = max(offset, 0)
        query = sa.select(decisions).order_by(decisions.c.decided_at.desc(), decisions.c.id.desc())
        if model is not None:
            query = query.where(decisions.c.model == model)
        if target is not None:
            query = query.where(decisions.c.target == target)
        if outcome is not None:
            query = query.where(decisions.c.outcome == Outcome(outcome).value)
        if outcomes is not None:
            query = query.where(decisions.c.outcome.in_([Outcome(o).value for o in outcomes]))
        if since is not None:
            query = query.where(decisions.c.decided_at >= utc(since, "since"))
        if until is not None:
            query = query.where(decisions.c.decided_at < utc(until, "until"))
        if model_glob is None:
            with self._read() as conn:
                rows = conn.execute(query.offset(offset).limit(limit)).all()
            return [decision_from_row(row._mapping) for row in rows]
        # LIKE narrows the rows; the glob decides. Stream until `limit` of them match.
        query = query.where(decisions.c.model.like(like_pattern(model_glob), escape=ESCAPE))
        found: list[RecordedDecision] = []
        skipped = 0
        with self._read() as conn:
            result = conn.execution_options(yield_per=max(limit + offset, 100)).execute(query)
            try:
                for row in result:
                    if not matches(row.model, model_glob):
                        continue
                    if skipped < offset:
                        skipped += 1
                        continue
                    found.append(decision_from_row(row._mapping))
                    if len(found) == limit:
                        break
            finally:
                result.close()
        return found

    def models(self) -> list[str]:
        """Every model the ledger has a decision on, by name."""
        query = sa.select(decisions.c.model).distinct().order_by(decisions.c.model)
        with self._read() as conn:
            return [str(row.model) for row in conn.execute(query)]

    def targets(self, model: str) -> list[tuple[RegistryKind, str]]:
        """The (registry, target) pairs the ledger has decisions on for `model`."""
        query = (
            sa.select(decisions.c.registry, decisions.c.target)
            .where(decisions.c.model == model)
            .distinct()
            .order_by(decisions.c.registry, decisions.c.target)
        )
        with self._read() as conn:
            return [(RegistryKind(row.registry), str(row.target)) for row in conn.execute(query)]

    # --- human review -----------------------------------------------------------------------

    def open_review(
        self, registry: RegistryKind, model: str, target: str
    ) -> RecordedDecision | None:
        """The review pending on `target`, if any: the newest pending_review decision there
        that no later decision replaced (one at most: a new request supersedes it)."""
        return self._newest(*_about(RegistryKind(registry), model, target), *_open_review())

    def open_reviews(self, registry: RegistryKind | None = None) -> list[RecordedDecision]:
        """Every review pending, oldest first."""
        query = sa.select(decisions).where(*_open_review()).order_by(decisions.c.id)
        if registry is not None:
            query = query.where(decisions.c.registry == RegistryKind(registry).value)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [decision_from_row(row._mapping) for row in rows]

    def vote(
        self,
        decision_id: int,
        reviewer: str,
        verdict: Verdict,
        comment: str | None,
        identified_by: str,
        at: datetime,
    ) -> tuple[Vote, bool]:
        """Record `reviewer`'s verdict on review `decision_id`; returns the vote and whether it
        is new (a reviewer votes once: their earlier vote is given back unchanged)."""
        values = {
            "decision_id": decision_id,
            "reviewer": reviewer,
            "verdict": Verdict(verdict).value,
            "comment": comment,
            "identified_by": identified_by,
            "cast_at": utc(at, "at"),
        }
        try:
            with self._write() as conn:
                self._require_decision(conn, decision_id)
                new_id = _new_id(conn.execute(sa.insert(votes).values(**values)))
        except sa.exc.IntegrityError:
            earlier = self._vote_of(decision_id, reviewer)
            if earlier is None:
                raise
            return earlier, False
        cast = self._vote_by_id(new_id)
        if cast is None:  # pragma: no cover - just written in this transaction's commit
            raise LedgerError(f"vote {new_id} vanished after it was written")
        return cast, True

    def votes(self, decision_id: int) -> list[Vote]:
        """The votes cast on review `decision_id`, oldest first."""
        query = sa.select(votes).where(votes.c.decision_id == decision_id).order_by(votes.c.id)
        with self._read() as conn:
            return [vote_from_row(row._mapping) for row in conn.execute(query).all()]

    def _vote_of(self, decision_id: int, reviewer: str) -> Vote | None:
        query = sa.select(votes).where(
            votes.c.decision_id == decision_id, votes.c.reviewer == reviewer
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return vote_from_row(row._mapping) if row is not None else None

    def _vote_by_id(self, vote_id: int) -> Vote | None:
        with self._read() as conn:
            row = conn.execute(sa.select(votes).where(votes.c.id == vote_id)).first()
        return vote_from_row(row._mapping) if row is not None else None

    def ask(
        self,
        registry: RegistryKind,
        model: str,
        version: str,
        target: str,
        requested_by: str,
        identified_by: str,
        at: datetime,
        comment: str | None = None,
    ) -> Asked:
        """Record a promotion requested through the gate by an authenticated user."""
        values = {
            "registry": RegistryKind(registry).value,
            "model": model,
            "version": version,
            "target": target,
            "requested_by": requested_by,
            "identified_by": identified_by,
            "requested_at": utc(at, "at"),
            "comment": comment,
        }
        with self._write() as conn:
            new_id = _new_id(conn.execute(sa.insert(requests).values(**values)))
        return Asked(
            id=new_id,
            registry=RegistryKind(registry),
            model=model,
            version=version,
            target=target,
            requested_by=requested_by,
            identified_by=identified_by,
            requested_at=utc(at, "at"),
            comment=comment,
        )

    def asked(self, registry: RegistryKind, model: str, version: str, target: str) -> Asked | None:
        """The newest request made through the gate for `version` to `target` that no decision
        answered yet (one made before the latest decision there was answered by it)."""
        kind = RegistryKind(registry)
        answered = (
            sa.select(sa.func.max(decisions.c.decided_at))
            .where(
                *_about(kind, model, target),
                decisions.c.version == version,
                decisions.c.outcome != Outcome.SKIPPED.value,
            )
            .scalar_subquery()
        )
        query = (
            sa.select(requests)
            .where(
                requests.c.registry == kind.value,
                requests.c.model == model,
                requests.c.version == version,
                requests.c.target == target,
                sa.or_(answered.is_(None), requests.c.requested_at > answered),
            )
            .order_by(requests.c.id.desc())
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return asked_from_row(row._mapping) if row is not None else None

    # --- approvals --------------------------------------------------------------------------

    def approve(
        self,
        registry: RegistryKind,
        model: str,
        target: str,
        version: str,
        decision_id: int,
        at: datetime,
    ) -> int:
        """`version` holds `target` by decision `decision_id` from `at` on; the previous holder's
        approval ends then ("replaced by version N"). Approving the holder again changes
        nothing. Returns the open approval's id."""
        registry, at = RegistryKind(registry), utc(at, "at")
        for attempt in range(1, _APPROVE_ATTEMPTS + 1):
            try:
                with self._write() as conn:
                    return self._approve(conn, registry, model, target, version, decision_id, at)
            except sa.exc.IntegrityError as exc:
                # Another process opened an approval for this target between our read and our
                # insert, outside the lock (a version of the gate without it?). Read again.
                if attempt == _APPROVE_ATTEMPTS:
                    raise LedgerError(
                        f"could not approve {model} version {version} for {target}: {exc.orig}"
                    ) from exc
        raise AssertionError("unreachable")

    def _approve(
        self,
        conn: Connection,
        registry: RegistryKind,
        model: str,
        target: str,
        version: str,
        decision_id: int,
        at: datetime,
    ) -> int:
        self._require_decision(conn, decision_id)
        engines.serialise(conn, "approvals", registry.value, model, target)
        holder = conn.execute(
            sa.select(approvals.c.id, approvals.c.version)
            .where(*_open(registry, model, target))
            .with_for_update()
        ).first()
        if holder is not None and holder.version == version:
            return int(holder.id)
        if holder is not None:
            conn.execute(
                sa.update(approvals)
                .where(approvals.c.id == holder.id)
                .values(ended_at=at, ended_reason=f"replaced by version {version}")
            )
        inserted = conn.execute(
            sa.insert(approvals).values(
                registry=registry.value,
                model=model,
                target=target,
                version=version,
                decision_id=decision_id,
                approved_at=at,
            )
        )
        return _new_id(inserted)

    def end_approval(
        self, registry: RegistryKind, model: str, target: str, reason: str, at: datetime
    ) -> str | None:
        """No version holds `target` by the gate's approval from `at` on (rolled back, undone);
        returns the version whose approval ended, None if none was open."""
        registry, at = RegistryKind(registry), utc(at, "at")
        with self._write() as conn:
            engines.serialise(conn, "approvals", registry.value, model, target)
            holder = conn.execute(
                sa.select(approvals.c.id, approvals.c.version)
                .where(*_open(registry, model, target))
                .with_for_update()
            ).first()
            if holder is None:
                return None
            conn.execute(
                sa.update(approvals)
                .where(approvals.c.id == holder.id)
                .values(ended_at=at, ended_reason=reason, revoked=True)
            )
            return str(holder.version)

    def approved_version(self, registry: RegistryKind, model: str, target: str) -> str | None:
        """The version the gate approved for `target` that holds it now, if any."""
        with self._read() as conn:
            found = conn.execute(
                sa.select(approvals.c.version).where(*_open(RegistryKind(registry), model, target))
            ).scalar_one_or_none()
        return str(found) if found is not None else None

    def is_approved(self, registry: RegistryKind, model: str, target: str, version: str) -> bool:
        return self.approved_version(registry, model, target) == version

    def standing(self, registry: RegistryKind, model: str, target: str) -> set[str]:
        """The versions the gate approved for `target` whose approval was not revoked: the one
        holding it, and those a newer approval replaced (a stage may hold several versions
        when its policy does not archive the others)."""
        query = sa.select(approvals.c.version).where(
            approvals.c.registry == RegistryKind(registry).value,
            approvals.c.model == model,
            approvals.c.target == target,
            approvals.c.revoked.is_(False),
        )
        with self._read() as conn:
            return {str(version) for version in conn.execute(query).scalars()}

    def history(self, registry: RegistryKind | None, model: str, target: str) -> list[Tenure]:
        """Who held `target` when, newest first, with the approving decision and why each
        tenure ended. `registry` None: every registry."""
        query = (
            sa.select(
                approvals,
                decisions.c.reason,
                decisions.c.requested_by,
                decisions.c.acted_by,
            )
            .join(decisions, decisions.c.id == approvals.c.decision_id)
            .where(approvals.c.model == model, approvals.c.target == target)
            .order_by(approvals.c.approved_at.desc(), approvals.c.id.desc())
        )
        if registry is not None:
            query = query.where(approvals.c.registry == RegistryKind(registry).value)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [tenure_from_row(row._mapping) for row in rows]

    # --- retention --------------------------------------------------------------------------

    def prune(self, before: datetime, *, dry_run: bool = False) -> int:
        """Delete what ended before `before`: the approvals that ended then, and the decisions
        taken then that no remaining approval references (a version holding a target, or one
        that held it after `before`, keeps its approving decision). Returns the number of
        decisions deleted (that would be, with `dry_run`)."""
        cutoff = utc(before, "before")
        referenced = (
            sa.select(approvals.c.id).where(approvals.c.decision_id == decisions.c.id).exists()
        )
        with self._write() as conn:
            conn.execute(
                sa.delete(approvals).where(
                    approvals.c.ended_at.is_not(None), approvals.c.ended_at < cutoff
                )
            )
            deleted = conn.execute(
                sa.delete(decisions).where(decisions.c.decided_at < cutoff, ~referenced)
            ).rowcount
            if dry_run:
                conn.rollback()
        if deleted and not dry_run:
            log.info("ledger %s: pruned %d decisions before %s", self.shown_url, deleted, cutoff)
        return int(deleted)

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with engines.guarded(self.url), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        # The commit happens inside `guarded`, so that a failure to commit is reported as such.
        with engines.guarded(self.url), self._writer.begin() as conn:
            yield conn

    @staticmethod
    def _require_decision(conn: Connection, decision_id: int) -> None:
        found = conn.execute(sa.select(decisions.c.id).where(decisions.c.id == decision_id))
        if found.first() is None:
            raise LedgerError(f"no decision {decision_id} in the ledger")


def _open(registry: RegistryKind, model: str, target: str) -> tuple[sa.ColumnElement[Any], ...]:
    return (
        approvals.c.registry == registry.value,
        approvals.c.model == model,
        approvals.c.target == target,
        approvals.c.ended_at.is_(None),
    )


def _open_review() -> tuple[sa.ColumnElement[Any], ...]:
    return (
        decisions.c.outcome == Outcome.PENDING_REVIEW.value,
        decisions.c.superseded_by.is_(None),
        sa.or_(
            decisions.c.action_state.is_(None),
            decisions.c.action_state != ActionState.FAILED.value,
        ),
    )


def _about(registry: RegistryKind, model: str, target: str) -> tuple[sa.ColumnElement[Any], ...]:
    return (
        decisions.c.registry == registry.value,
        decisions.c.model == model,
        decisions.c.target == target,
    )


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no id for the inserted row")
    return int(key[0])
