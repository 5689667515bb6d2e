"""`mlflow-gate status`: what the gate is doing, for operators."""

from __future__ import annotations

from typing import Any

import click
import redis

from cli.audit import decision_dict
from shared import keys
from shared.errors import GateError
from shared.ledger import Ledger
from shared.queue import create_celery
from shared.settings import Settings
from shared.urls import redacted, scrubbed
from worker.registries import open_source


def gather_status(settings: Settings) -> dict[str, Any]:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=2)
    status: dict[str, Any] = {
        "redis": {"url": redacted(settings.redis_url), "reachable": False},
        "mlflow": {
            "url": redacted(settings.mlflow_tracking_uri),
            "reachable": open_source(settings).healthy(),
        },
    }
    try:
        pipe = client.pipeline()
        pipe.llen(keys.QUEUE)
        pipe.hlen(keys.UNACKED)
        pipe.zcard(keys.DEADLETTER_INDEX)
        queued, in_flight, dead = pipe.execute()
    except redis.RedisError as exc:
        status["redis"]["error"] = scrubbed(str(exc))
        status["workers"] = []
        status["ok"] = False
        return status
    status["redis"]["reachable"] = True
    status["queue_depth"] = int(queued)
    status["tasks_in_flight"] = int(in_flight)
    status["dead_letters"] = int(dead)
    replies = create_celery(settings).control.ping(timeout=1.0)
    status["workers"] = sorted(name for reply in replies for name in reply)
    status["ledger"], status["last_decisions"] = ledger_status(settings)
    status["ok"] = bool(
        status["mlflow"]["reachable"] and status["workers"] and status["ledger"]["reachable"]
    )
    return status


def ledger_status(settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ledger's state, and its last five decisions."""
    with Ledger(settings.database_url) as ledger:
        found: dict[str, Any] = {"url": ledger.shown_url, "reachable": False}
        try:
            found["revision"] = ledger.check_current()
            last = [decision_dict(d) for d in ledger.decisions(limit=5)]
        except GateError as exc:
            found["error"] = str(exc)
            return found, []
    found["reachable"] = True
    return found, last


def print_status(status: dict[str, Any]) -> None:
    def mark(ok: bool) -> str:
        return "up" if ok else "DOWN"

    redis_line = f"redis     {mark(status['redis']['reachable'])}  {status['redis']['url']}"
    click.echo(
        redis_line + (f"  ({status['redis']['error']})" if "error" in status["redis"] else "")
    )
    click.echo(f"mlflow    {mark(status['mlflow']['reachable'])}  {status['mlflow']['url']}")
    if "ledger" in status:
        ledger = status["ledger"]
        click.echo(
            f"ledger    {mark(ledger['reachable'])}  {ledger['url']}"
            + (f"  ({ledger['error']})" if "error" in ledger else "")
        )
    workers = status["workers"]
    click.echo(
        f"workers   {len(workers)} online"
        + (f": {', '.join(workers)}" if workers else "  (none answered: start one)")
    )
    if status["redis"]["reachable"]:
        click.echo(
            f"queue     {status['queue_depth']} waiting, {status['tasks_in_flight']} in "
            f"flight, {status['dead_letters']} dead letters"
        )
        if status["dead_letters"]:
            click.echo("          see them with: mlflow-gate dlq list")
        click.echo("last decisions:")
        print_decisions(status["last_decisions"], indent="  ")


def print_decisions(entries: list[dict[str, Any]], indent: str = "") -> None:
    if not entries:
        click.echo(f"{indent}(none yet)")
        return
    for e in entries:
        click.echo(
            f"{indent}{e.get('time', '')[:19]}  {e.get('model')} v{e.get('version')} -> "
            f"{e.get('target')}  {str(e.get('outcome', '')).upper()}  event {e.get('event_id')}"
        )
        click.echo(f"{indent}    {e.get('reason')}")
