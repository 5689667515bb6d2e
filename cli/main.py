"""`mlflow-gate`: the operator's command line. Each verb builds the settings once and hands them
down; a bad setting or policy file stops it with a message, never a traceback."""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import redis

from cli.up import click_options as up_options
from shared import logs
from shared.errors import ConfigError, GateError
from shared.events import RegistryKind
from shared.metrics import prepare_multiprocess_dir
from shared.outcomes import Outcome
from shared.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"mlflow-gate: configuration error: {exc}", err=True)
            sys.exit(2)
        except GateError as exc:
            click.echo(f"mlflow-gate: {exc}", err=True)
            sys.exit(2)
        except redis.RedisError as exc:
            click.echo(f"mlflow-gate: Redis at GATE_REDIS_URL did not answer: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def load_settings() -> Settings:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return settings


@click.group()
def main() -> None:
    """A governance gate for the MLflow Model Registry."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per process")
@friendly_errors
def receiver(host: str, port: int, workers: int, threads: int) -> None:
    """Serve POST /webhooks/mlflow (and /healthz, /readyz, /metrics) with gunicorn."""
    settings = load_settings()
    prepare_multiprocess_dir("receiver")  # before prometheus_client is imported, or forks
    from receiver.serve import serve

    serve(settings, host=host, port=port, workers=workers, threads=threads)


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per process")
@friendly_errors
def console(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the web console (decisions, models, reviews, dead letters, policy) with gunicorn.
    Needs GATE_CONSOLE_SECRET."""
    settings = load_settings()
    from console.serve import serve

    serve(settings, host=host, port=port, workers=workers, threads=threads)


@main.command()
@click.option("--concurrency", "-c", default=2, show_default=True, type=int)
@click.option(
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "solo", "threads"]),
)
@click.option(
    "--beat", is_flag=True, help="also run the periodic sweep and redrive (in one worker only)"
)
@friendly_errors
def worker(concurrency: int, pool: str, beat: bool) -> None:
    """Run a Celery worker that decides the queued events."""
    settings = load_settings()
    prepare_multiprocess_dir("worker")  # before prometheus_client is imported, or forks
    from shared import keys
    from shared.ledger import Ledger
    from shared.notify.sinks import check as check_sinks
    from shared.policy import load_policies
    from shared.queue import create_celery
    from shared.urls import redacted
    from worker import metrics, runtime

    policies = load_policies(settings.policy_file)
    notify = check_sinks(policies)  # every sink's variable set and valid, or stop here
    with Ledger(settings.database_url) as ledger:  # migrated before the children fork
        revision = ledger.upgrade()
        where = ledger.shown_url
    runtime.install(runtime.Runtime(settings, policies))
    app = create_celery(settings)
    import worker.delivery  # (registers the notifications' task)
    import worker.tasks  # noqa: F401  (registers the tasks on the app)

    metrics.serve(settings.worker_metrics_port)

    click.echo(
        f"mlflow-gate worker: {len(policies.policies)} policies from {policies.source}; "
        f"MLflow at {redacted(settings.mlflow_tracking_uri)}; ledger at {where} (revision "
        f"{revision}); queue {keys.QUEUE}; {notify}"
    )
    argv = ["worker", f"--loglevel={settings.log_level}", "-Q", keys.QUEUE]
    argv += ["-c", str(concurrency), "-P", pool, "--without-gossip", "--without-mingle"]
    if beat:
        schedule = Path(tempfile.gettempdir()) / f"mlflow-gate-beat-{os.getpid()}"
        argv += ["--beat", f"--schedule={schedule}"]
        redrive = (
            f"every {settings.redrive_interval_seconds:g} s" if settings.redrive_enabled else "off"
        )
        click.echo(
            f"periodic: sweep every {settings.sweep_interval_seconds:g} s; redrive {redrive}"
        )
    # What is loaded now (Celery, SQLAlchemy, the policies: ~90,000 objects) lives as long as
    # the worker: out of the garbage collector's scans, in this process and in the children it
    # forks (as the gc module's documentation advises before a fork).
    gc.freeze()
    app.worker_main(argv)


@main.group()
def webhook() -> None:
    """Manage the MLflow webhook that feeds the gate."""


@webhook.command("register")
@click.option("--url", required=True, help="the receiver's URL, ending in /webhooks/mlflow")
@click.option("--name", default="mlflow-gate", show_default=True)
@click.option(
    "--databricks", is_flag=True, help="a Databricks registry webhook (GATE_DATABRICKS_*)"
)
@click.option("--model", help="with --databricks: only this model (default: every model)")
@friendly_errors
def webhook_register(url: str, name: str, databricks: bool, model: str | None) -> None:
    """Create, or update by name, the MLflow webhook with the secret and the gate's events;
    with --databricks, create the workspace's registry webhook instead."""
    from cli import webhooks

    if databricks:
        click.echo(webhooks.register_workspace(load_settings(), url=url, model=model))
        return
    click.echo(webhooks.register(load_settings(), url=url, name=name))


@main.command()
@click.argument("model")
@click.option("--target", required=True, help="the alias (champion) or stage (Production)")
@click.option("--reason", required=True, help="why; recorded with the decision")
@click.option("--databricks", is_flag=True, help="a Databricks workspace model (a stage)")
@friendly_errors
def rollback(model: str, target: str, reason: str, databricks: bool) -> None:
    """Put the alias or stage back on the previous version the gate approved. Exit 1 if there
    is none."""
    from cli.rollback import rollback as run
    from shared.events import RegistryKind

    kind = RegistryKind.DATABRICKS if databricks else RegistryKind.MLFLOW
    code = run(load_settings(), model, target, reason, registry_kind=kind, echo=click.echo)
    sys.exit(code)


@main.command()
@click.argument("model")
@click.argument("version")
@click.option("--target", required=True, help="an alias (champion) or a stage (Production)")
@friendly_errors
def explain(model: str, version: str, target: str) -> None:
    """Evaluate a version against the policy without acting. Exit 0 pass, 1 fail."""
    from cli.explain import explain as run

    sys.exit(run(load_settings(), model, version, target, click.echo))


@main.group()
def policy() -> None:
    """Work with policy files."""


@main.command()
@up_options
@friendly_errors
def up(
    mlflow_uri: str | None,
    demo: bool,
    data_dir: Path,
    mlflow_port: int,
    receiver_port: int,
    flower_port: int,
    redis_port: int,
    console_port: int,
) -> None:
    """Start the whole stack on this machine: MLflow, Redis, receiver, worker, Flower and the
    console."""
    from cli.up import Options
    from cli.up import up as run

    options = Options(data_dir, mlflow_uri, mlflow_port, receiver_port, flower_port, redis_port,
                      demo, console_port)  # fmt: skip
    sys.exit(run(load_settings(), options, click.echo))


@main.command("demo")
@friendly_errors
def demo_command() -> None:
    """Against a running stack: a model with a version that passes and one that fails."""
    from cli.demo import demo

    sys.exit(demo(load_settings(), click.echo))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def status(as_json: bool) -> None:
    """Queue depth, tasks in flight, dead letters, workers, MLflow and Redis, last decisions.
    Exit 1 when something is down."""
    from cli.status import gather_status, print_status

    report = gather_status(load_settings())
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_status(report)
    sys.exit(0 if report["ok"] else 1)


@main.command()
@click.option("--model", help="only models matching this glob (fraud-*), or this name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def decisions(model: str | None, limit: int, as_json: bool) -> None:
    """The ledger's decisions, newest first (the same as `audit`, with fewer filters)."""
    from cli import audit as commands

    commands.list_decisions(
        load_settings(),
        model=model,
        target=None,
        outcome=None,
        since=None,
        limit=limit,
        output="json" if as_json else "table",
        echo=click.echo,
    )


@main.group()
def dlq() -> None:
    """Inspect, replay and purge the dead-letter store."""


def _filters(func: F) -> F:
    func = click.option("--since", help="failed within (30m, 2h, 1d) or after an ISO time")(func)
    func = click.option("--error", help="error class or message contains this")(func)
    return click.option("--model", help="model name (glob)")(func)


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@_filters
@friendly_errors
def dlq_list(as_json: bool, model: str | None, error: str | None, since: str | None) -> None:
    """A table of dead letters: id, model, version, event, error, attempts, age."""
    from cli import dlq as commands

    commands.list_entries(load_settings(), as_json=as_json, model=model, error=error, since=since)


@dlq.command("show")
@click.argument("entry_id")
@friendly_errors
def dlq_show(entry_id: str) -> None:
    """One dead letter in full: the original event, the error, the attempts."""
    from cli import dlq as commands

    commands.show(load_settings(), entry_id)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter the filters match")
@_filters
@click.option("--dry-run", is_flag=True, help="say what would be replayed, do nothing")
@friendly_errors
def dlq_replay(ids: tuple[str, ...], **options: Any) -> None:
    """Re-enqueue dead letters; each is removed only once its enqueue succeeded."""
    from cli import dlq as commands

    sys.exit(commands.replay_entries(load_settings(), ids, **options))


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@friendly_errors
def dlq_purge(yes: bool) -> None:
    """Delete every dead letter (asks first)."""
    from cli import dlq as commands

    commands.purge(load_settings(), yes=yes)


@main.group()
def db() -> None:
    """The gate's ledger database (GATE_DATABASE_URL)."""


@db.command("upgrade")
@friendly_errors
def db_upgrade() -> None:
    """Apply the ledger's migrations (nothing to do when up to date) and print the revision.
    Exit 2 when the database cannot be reached."""
    from cli import audit as commands

    commands.upgrade(load_settings(), click.echo)


@main.group(invoke_without_command=True)
@click.option("--model", help="model name (glob: fraud-*)")
@click.option("--target", help="an alias (champion) or a stage (Production)")
@click.option("--outcome", type=click.Choice([o.value for o in Outcome]))
@click.option("--since", help="decided within (30m, 2h, 1d) or after an ISO time")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="a JSON list of decisions")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: a header row, one row per decision")
@click.pass_context
@friendly_errors
def audit(
    ctx: click.Context,
    model: str | None,
    target: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    as_csv: bool,
) -> None:
    """The ledger's decisions, newest first: time, model, version, target, outcome, and the
    reason under each. `audit history` and `audit prune` below."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    from cli import audit as commands

    output = "json" if as_json else "csv" if as_csv else "text"
    commands.list_decisions(
        load_settings(),
        model=model,
        target=target,
        outcome=outcome,
        since=since,
        limit=limit,
        output=output,
        echo=click.echo,
    )


@audit.command("history")
@click.argument("model")
@click.option("--target", required=True, help="an alias (champion) or a stage (Production)")
@click.option("--registry", type=click.Choice([r.value for r in RegistryKind]))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def audit_history(model: str, target: str, registry: str | None, as_json: bool) -> None:
    """Who held the target when: each version the gate approved, from when until when, the
    decision that approved it and why it ended. Exit 1 if the gate never approved one."""
    from cli import audit as commands

    settings = load_settings()
    sys.exit(commands.history(settings, model, target, registry, as_json=as_json, echo=click.echo))


@audit.command("prune")
@click.option("--before", required=True, help="an ISO date or time, or a duration back (90d)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@friendly_errors
def audit_prune(before: str, yes: bool) -> None:
    """Delete the decisions recorded before a date (those no version holding a target still
    needs) and the approvals that ended before it. Nothing expires by itself."""
    from cli import audit as commands

    commands.prune(load_settings(), before, yes=yes, echo=click.echo)


_REGISTRY = click.option(
    "--registry",
    type=click.Choice([k.value for k in RegistryKind]),
    default=RegistryKind.MLFLOW.value,
    show_default=True,
    help="Which registry the model is in.",
)


@main.command("request")
@click.argument("model")
@click.argument("version")
@click.option("--target", required=True, help="The alias (champion) or stage (Production).")
@click.option("--comment", default=None, help="Why, for the reviewers.")
@_REGISTRY
@friendly_errors
def request_command(
    model: str, version: str, target: str, comment: str | None, registry: str
) -> None:
    """Request the promotion of a version, as yourself (MLflow credentials), through the gate at
    GATE_URL. Exit 0 requested, 1 refused, 2 usage."""
    from cli.people import GateApi, request_promotion

    api = GateApi(load_settings())
    sys.exit(request_promotion(api, model, version, target, comment, registry, click.echo))


@main.group()
def review() -> None:
    """Human review: list what waits, approve or reject, as yourself (MLflow credentials),
    through the gate at GATE_URL. Exit 0 done, 1 refused, 2 usage."""


@review.command("list")
@click.option("--mine", is_flag=True, help="Only the reviews you may vote on.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def review_list(mine: bool, as_json: bool) -> None:
    """The reviews pending, with their approvals so far."""
    from cli.people import GateApi, list_reviews

    sys.exit(list_reviews(GateApi(load_settings()), mine, as_json, click.echo))


@review.command("approve")
@click.argument("model")
@click.argument("version")
@click.option("--target", required=True)
@click.option("--comment", default=None)
@_REGISTRY
@friendly_errors
def review_approve(
    model: str, version: str, target: str, comment: str | None, registry: str
) -> None:
    """Approve a pending review."""
    from cli.people import GateApi, vote

    api = GateApi(load_settings())
    sys.exit(vote(api, "approve", model, version, target, comment, registry, click.echo))


@review.command("reject")
@click.argument("model")
@click.argument("version")
@click.option("--target", required=True)
@click.option("--comment", required=True, help="Why: shown in governance.reason.")
@_REGISTRY
@friendly_errors
def review_reject(model: str, version: str, target: str, comment: str, registry: str) -> None:
    """Reject a pending review (with a comment saying why)."""
    from cli.people import GateApi, vote

    api = GateApi(load_settings())
    sys.exit(vote(api, "reject", model, version, target, comment, registry, click.echo))


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
def policy_check(file: str) -> None:
    """Validate a policy file; say what is wrong and where. Exit 0 valid, 1 not."""
    from pathlib import Path

    from shared.policy import load_policies

    try:
        policies = load_policies(Path(file))
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: {file}: {len(policies.policies)} policies")
    for p in policies.policies:
        targets = ", ".join(f"{t} ({t.kind})" for t in p.targets)
        review = ""
        if p.review is not None:
            who = [*p.review.reviewers, *([f"role {p.review.role}"] if p.review.role else [])]
            review = f"; review: {p.review.approvals} approval(s) from {', '.join(who) or 'anyone'}"
        notify = f"; notifies {len(p.notify)} sink(s)" if p.notify else ""
        click.echo(
            f"  {p.name} [{p.mode}]: models {', '.join(p.models)} -> {targets}; "
            f"{len(p.rules)} rules{review}{notify}"
        )
    if policies.notify:
        click.echo(f"  notify (every policy): {', '.join(s.key for s in policies.notify)}")


@policy.command("test")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--last",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="how many decisions to decide again, newest first",
)
@click.option("--model", help="only models matching this glob (fraud-*), or this name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def policy_test(file: str, last: int, model: str | None, as_json: bool) -> None:
    """What FILE would have decided for the ledger's last N decisions, on the facts they
    recorded. Exit 0 none would flip, 1 some would, 2 invalid file or no ledger."""
    from cli.policytest import try_policy

    settings = load_settings()
    sys.exit(try_policy(settings, file, last=last, model=model, as_json=as_json, echo=click.echo))


if __name__ == "__main__":
    main()
