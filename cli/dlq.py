"""`mlflow-gate dlq`: look at, replay and purge the dead-letter store."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any

import click
import redis

from shared.deadletter import DeadLetter, DeadLetterStore, describe, replay, select
from shared.durations import since_timestamp
from shared.queue import create_celery, publisher
from shared.settings import Settings


def _store(settings: Settings) -> DeadLetterStore:
    return DeadLetterStore(
        redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _filtered(
    settings: Settings, model: str | None, error: str | None, since: str | None
) -> list[DeadLetter]:
    after = since_timestamp(since, time.time()) if since else None
    return select(_store(settings).all(), model=model, error=error, since=after)


def list_entries(
    settings: Settings, *, as_json: bool, model: str | None, error: str | None, since: str | None
) -> None:
    entries = _filtered(settings, model, error, since)
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2))
        return
    if not entries:
        click.echo(
            "the dead-letter store is empty"
            + (" (for these filters)" if model or error or since else "")
        )
        return
    now = time.time()
    rows = [("ID", "MODEL", "VERSION", "EVENT", "ERROR", "ATTEMPTS", "AGE")]
    for e in entries:
        rows.append(
            (
                e.id,
                e.model or "-",
                e.version or "-",
                describe(e.event),
                f"{e.error_class}: {e.error}"[:60],
                str(e.attempts),
                _age(now - e.last_failure),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"{len(entries)} dead letters")


def show(settings: Settings, entry_id: str) -> None:
    entry = _store(settings).get(entry_id)
    if entry is None:
        click.echo(f"no dead letter {entry_id!r}; `mlflow-gate dlq list` shows the ids", err=True)
        sys.exit(1)
    click.echo(json.dumps(asdict(entry), indent=2))


def replay_entries(settings: Settings, ids: tuple[str, ...], **options: Any) -> int:
    """Options: replay_all, dry_run, and the filters model, error, since (as on the command)."""
    replay_all, dry_run = bool(options["replay_all"]), bool(options["dry_run"])
    model, error, since = options["model"], options["error"], options["since"]
    if bool(ids) == replay_all:
        click.echo("give either dead-letter ids or --all (with optional filters)", err=True)
        return 2
    store = _store(settings)
    chosen = list(ids) if ids else [e.id for e in _filtered(settings, model, error, since)]
    report = replay(store, publisher(create_celery(settings)), chosen, dry_run=dry_run)
    for entry_id in report.replayed:
        click.echo(f"{'would replay' if dry_run else 'replayed'} {entry_id}")
    for entry_id, why in report.failed:
        click.echo(f"failed {entry_id}: {why} (the entry is kept)", err=True)
    for entry_id in report.missing:
        click.echo(f"not found {entry_id}", err=True)
    click.echo(report.summary(dry_run))
    return 1 if report.failed or report.missing else 0


def purge(settings: Settings, *, yes: bool) -> None:
    store = _store(settings)
    count = store.count()
    if count == 0:
        click.echo("the dead-letter store is already empty")
        return
    if not yes and not click.confirm(f"Delete all {count} dead letters for good?"):
        click.echo("nothing purged")
        return
    click.echo(f"purged {store.purge()} dead letters")
