"""`mlflow-gate audit` and `mlflow-gate db`: the ledger from the operator's side.

The audit commands read the ledger without migrating it (a newer CLI must not change the schema
under older workers); `db upgrade` migrates it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import click

from shared import database_url
from shared.durations import since_timestamp
from shared.errors import ConfigError
from shared.events import RegistryKind
from shared.ledger import Ledger, LedgerError, RecordedDecision, Tenure
from shared.ledger.engine import sqlite_path
from shared.outcomes import Outcome
from shared.policy import Target
from shared.settings import Settings

Echo = Callable[[str], None]

COLUMNS = (
    "id", "time", "registry", "model", "version", "target", "target_kind", "outcome", "reason",
    "policies", "checks", "facts", "event_id", "origin", "requested_by", "acted_by",
    "action_state", "superseded_by",
)  # fmt: skip


# --- db upgrade --------------------------------------------------------------------------------


def upgrade(settings: Settings, echo: Echo) -> None:
    with Ledger(settings.database_url) as ledger:
        before = ledger.revision()
        reached = ledger.upgrade()
        if before == reached:
            echo(f"ledger at {ledger.shown_url}: already at revision {reached} (head)")
        else:
            echo(
                f"ledger at {ledger.shown_url}: upgraded from {before or 'an empty database'} "
                f"to revision {reached} (head)"
            )


# --- audit (the listing) -----------------------------------------------------------------------


def list_decisions(
    settings: Settings,
    *,
    model: str | None,
    target: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    output: str,
    echo: Echo,
) -> None:
    after = _moment(since, "--since") if since else None
    with reader(settings) as ledger:
        found = ledger.decisions(
            model_glob=model,
            target=canonical_target(target) if target else None,
            outcome=Outcome(outcome) if outcome else None,
            since=after,
            limit=limit,
        )
    if output == "json":
        echo(json.dumps([decision_dict(d) for d in found], indent=2))
    elif output == "csv":
        echo(decisions_csv(found).rstrip("\n"))
    elif not found:
        filtered = model or target or outcome or since
        echo("no decisions in the ledger" + (" for these filters" if filtered else ""))
    else:
        echo(decisions_table(found))


def decision_dict(decision: RecordedDecision) -> dict[str, Any]:
    return {
        "id": decision.id,
        "time": iso(decision.decided_at),
        "registry": decision.registry.value,
        "model": decision.model,
        "version": decision.version,
        "target": decision.target,
        "target_kind": decision.target_kind.value,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "policies": list(decision.policies),
        "checks": [c.to_dict() for c in decision.checks],
        "facts": dict(decision.facts),
        "event_id": decision.event_id,
        "origin": decision.origin.value,
        "requested_by": decision.requested_by,
        "acted_by": decision.acted_by,
        "action_state": decision.action_state.value if decision.action_state else None,
        "superseded_by": decision.superseded_by,
    }


def decisions_csv(found: Sequence[RecordedDecision]) -> str:
    """A header row, then one row per decision; lists and objects as JSON, None as empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for decision in found:
        row = decision_dict(decision)
        for key in ("policies", "checks", "facts"):
            row[key] = json.dumps(row[key])
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def decisions_table(found: Sequence[RecordedDecision]) -> str:
    header = ("ID", "TIME", "MODEL", "VERSION", "TARGET", "OUTCOME", "ORIGIN", "REQUESTED BY")
    rows = [
        (
            str(d.id),
            shown(d.decided_at),
            d.model,
            d.version,
            d.target,
            d.outcome.value,
            d.origin.value,
            d.requested_by or "-",
        )
        for d in found
    ]
    notes = [[d.reason] for d in found]
    lines = _table(header, rows, notes)
    lines.append(f"{len(found)} decision{'' if len(found) == 1 else 's'}, newest first")
    return "\n".join(lines)


# --- audit history -----------------------------------------------------------------------------


def history(
    settings: Settings,
    model: str,
    target: str,
    registry: str | None,
    *,
    as_json: bool,
    echo: Echo,
) -> int:
    """Exit 1 when the gate never approved a version for the target."""
    name = canonical_target(target)
    kind = RegistryKind(registry) if registry else None
    with reader(settings) as ledger:
        tenures = ledger.history(kind, model, name)
    if as_json:
        echo(json.dumps([tenure_dict(t) for t in tenures], indent=2))
    if not tenures:
        where = f" in {kind.value}" if kind else ""
        click.echo(
            f"the ledger has no approval of {model} for {name}{where}: the gate never approved a "
            "version for it (or that history was pruned)",
            err=True,
        )
        return 1
    if not as_json:
        echo(tenures_table(model, name, tenures))
    return 0


def tenure_dict(tenure: Tenure) -> dict[str, Any]:
    return {
        "registry": tenure.registry.value,
        "model": tenure.model,
        "target": tenure.target,
        "version": tenure.version,
        "from": iso(tenure.approved_at),
        "until": iso(tenure.ended_at) if tenure.ended_at else None,
        "current": tenure.current,
        "ended_reason": tenure.ended_reason,
        "revoked": tenure.revoked,
        "decision": {
            "id": tenure.decision_id,
            "reason": tenure.reason,
            "requested_by": tenure.requested_by,
            "acted_by": tenure.acted_by,
        },
    }


def tenures_table(model: str, target: str, tenures: Sequence[Tenure]) -> str:
    header = ("VERSION", "FROM", "UNTIL", "REGISTRY", "DECISION", "REQUESTED BY", "ACTED BY")
    rows = [
        (
            t.version,
            shown(t.approved_at),
            shown(t.ended_at) if t.ended_at else "now",
            t.registry.value,
            f"#{t.decision_id}",
            t.requested_by or "-",
            t.acted_by or "-",
        )
        for t in tenures
    ]
    notes = [
        [f"approved: {t.reason}"] + ([f"ended: {t.ended_reason}"] if t.ended_at else [])
        for t in tenures
    ]
    lines = [f"{target} of {model}, newest first:", *_table(header, rows, notes)]
    return "\n".join(lines)


# --- audit prune -------------------------------------------------------------------------------


def prune(settings: Settings, before: str, *, yes: bool, echo: Echo) -> None:
    cutoff = _moment(before, "--before")
    when = shown(cutoff)
    with reader(settings) as ledger:
        count = ledger.prune(cutoff, dry_run=True)
        if count == 0:
            echo(f"nothing to delete: no decision before {when} that the ledger may forget")
            return
        question = (
            f"Delete {count} decision{'' if count == 1 else 's'} recorded before {when}, and the "
            "approvals that ended before then, for good?"
        )
        if not yes and not click.confirm(question):
            echo("nothing deleted")
            return
        deleted = ledger.prune(cutoff)
    echo(f"deleted {deleted} decision{'' if deleted == 1 else 's'} recorded before {when}")


# --- shared ------------------------------------------------------------------------------------


@contextlib.contextmanager
def reader(settings: Settings) -> Iterator[Ledger]:
    """The ledger, for reading: it must exist (nothing is created) and be at this code's
    revision."""
    url = database_url.parse(settings.database_url)
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is not None and not path.exists():
        raise LedgerError(
            f"no ledger at {os.path.abspath(path)} (GATE_DATABASE_URL): nothing was recorded "
            "here yet. A relative path is relative to the working directory; the worker "
            "creates the file at start, `mlflow-gate db upgrade` too"
        )
    with Ledger(url) as ledger:
        ledger.check_current()
        yield ledger


def canonical_target(text: str) -> str:
    """Stages in their canonical spelling (`production` is `Production`), aliases as given."""
    return Target.parse(text).name


def _moment(text: str, option: str) -> datetime:
    try:
        return datetime.fromtimestamp(since_timestamp(text, time.time()), timezone.utc)
    except ConfigError:
        raise ConfigError(
            f"{option} {text!r} is not a time: give a duration back from now (30m, 2h, 90d) or "
            "an ISO 8601 date or time (2026-11-23, 2026-11-23T10:00Z)"
        ) from None


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def shown(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[Sequence[str]]
) -> list[str]:
    """Aligned columns; under each row, its notes, indented."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header)]
    for row, row_notes in zip(rows, notes, strict=True):
        out.append(line(row))
        out.extend(f"    {note}" for note in row_notes)
    return out
