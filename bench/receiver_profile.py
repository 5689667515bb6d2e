"""Where one acknowledgement's time goes: the receiver's request in process, against a real Redis.

Not a latency benchmark (bench/ingest.py is): it drives the Flask app through its test client, so
no HTTP server or network is involved, and compares the receiver as configured with variants that
remove one piece of work each, to show what each costs per request:

- as configured (create_app with the settings' Celery app), logging at INFO to a file as the
  `mlflow-gate receiver` process does. A webhook's one log line is its access line, which
  gunicorn's logger writes after the response (shared/webserver.py), so it is not included here;
- without the app's before/after-request hooks (the per-request metrics, where present);
- through `publisher()` (Celery's send_task, without its `task-sent` event): the three round trips
  the receiver made before its one atomic EVALSHA (claim the delivery id, publish, mark it done);
- publish replaced by a no-op: the floor of verify + parse + dedupe (two SETs) without the
  enqueue.

Also counts the Redis commands per request and prints the top of a cProfile of the handler.

    python bench/receiver_profile.py [-n 3000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import time
from collections.abc import Callable
from typing import Any

import redis
from _stack import (
    SECRET,
    Stack,
    machine_info,
    machine_line,
    markdown_table,
    signed_headers,
    table,
    webhook_body,
    write_results,
)
from flask import Flask

from receiver.app import create_app
from shared.queue import create_celery, publisher
from shared.settings import Settings


def per_request(app: Flask, n: int, warmup: int = 300) -> float:
    client = app.test_client()

    def one() -> None:
        body = webhook_body("profile-model", "1")
        answer = client.post("/webhooks/mlflow", data=body, headers=signed_headers(SECRET, body))
        if answer.status_code != 202:
            raise RuntimeError(f"{answer.status_code}: {answer.data!r}")

    for _ in range(warmup):
        one()
    begin = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - begin) / n


def configure_logging(level: str, path: Any) -> None:
    """The receiver process's logging, written to a file instead of stderr."""
    try:
        from shared import logs

        logs.configure(level, "json")
    except (ImportError, AttributeError, TypeError):
        logging.basicConfig(level=level, force=True)
    stream = open(path, "a")  # noqa: SIM115 (lives as long as the process)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    logging.getLogger().setLevel(level)


def without_hooks(app: Flask) -> Flask:
    app.before_request_funcs.clear()
    app.after_request_funcs.clear()
    return app


def redis_commands(r: redis.Redis, app: Flask, n: int) -> dict[str, float]:
    r.config_resetstat()
    per_request(app, n, warmup=0)
    stats = r.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): round(int(v["calls"]) / n, 2)
        for k, v in stats.items()
        if k not in ("cmdstat_config", "cmdstat_info")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per variant")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    params = {"n": args.n}
    load_start, started = os.getloadavg(), time.time()

    with Stack("profile", keep=args.keep) as stack:
        stack.start_redis()
        settings = Settings(redis_url=stack.redis_url, webhook_secret=SECRET)
        r = redis.Redis.from_url(stack.redis_url)
        quiet = create_celery(settings)
        quiet.conf.task_send_sent_event = False

        def noop(event: dict[str, Any]) -> None:
            pass

        log_file = stack.workdir / "receiver.log"
        configure_logging("INFO", log_file)
        variants: dict[str, Callable[[], Flask]] = {
            "as configured (INFO logs)": lambda: create_app(settings),
            "without request hooks (metrics)": lambda: without_hooks(create_app(settings)),
            "through publisher(): 3 round trips": lambda: create_app(
                settings, publish=publisher(quiet)
            ),
            "enqueue replaced by a no-op": lambda: create_app(settings, publish=noop),
        }
        apps = {name: make() for name, make in variants.items()}
        timings: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(3):  # interleaved, to spread the machine's noise over all variants
            for name, app in apps.items():
                timings[name].append(per_request(app, args.n))
        logging.getLogger().setLevel("INFO")
        commands = {name: redis_commands(r, app, min(args.n, 1000)) for name, app in apps.items()}
        profiler = cProfile.Profile()
        profiler.enable()
        per_request(apps["as configured (INFO logs)"], min(args.n, 1000), warmup=0)
        profiler.disable()

    best = {name: min(t) for name, t in timings.items()}
    headers = ["receiver variant (in process, test client)", "ms/request", "Redis commands/req"]
    rows = [
        [
            name,
            f"{best[name] * 1000:.3f}",
            ", ".join(f"{k} {v:g}" for k, v in sorted(commands[name].items())),
        ]
        for name in apps
    ]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    profile = text.getvalue()
    info = machine_info()
    printed = "\n".join(
        [
            f"receiver_profile: {args.n} requests per variant, best of 3 interleaved runs",
            f"machine: {machine_line(info)}",
            table(headers, rows),
        ]
    )
    print(profile.strip()[:6000])
    print("\n" + printed)
    path = write_results(
        "receiver_profile",
        params,
        {
            "ms_per_request": {k: round(v * 1000, 3) for k, v in best.items()},
            "redis_commands_per_request": commands,
            "cprofile_top": profile,
            "markdown": markdown_table(headers, rows),
        },
        load_start=load_start,
        started=started,
        printed=printed,
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
