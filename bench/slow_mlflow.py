"""MLflow answering slowly: the gate's acknowledgement latency beside a synchronous handler's.

Starts a private MLflow with a delaying proxy in front of it (tests/harness.DelayProxy, `--delay`
seconds per call), Redis, the gate (receiver, and a worker deciding through the proxy) and
bench/sync_handler.py (the same evaluation done inside the request), both under gunicorn with the
same processes and threads. A separate load-generating process sends the same signed
`governance.request` webhooks at a modest rate to each in turn, with MLflow's delivery settings:
10 connections (MLFLOW_WEBHOOK_DELIVERY_MAX_WORKERS) and a 30 s timeout
(MLFLOW_WEBHOOK_REQUEST_TIMEOUT). Reports p50/p95/p99 acknowledgement latency, how many requests
exceeded the timeout or failed.

By default two runs: 0.5 s a call for 15 s, and 3 s a call (an MLflow in trouble) for 5 s.

    python bench/slow_mlflow.py [--quick] [--delays 0.5,3] [--durations 15,5] [--rate 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import redis
import requests
from _stack import (
    BENCH,
    SECRET,
    DelayProxy,
    Stack,
    create_versions,
    free_port,
    latency_stats,
    machine_info,
    machine_line,
    markdown_table,
    ms,
    run_loadgen,
    table,
    wait_until,
    write_results,
)

MLFLOW_DELIVERY_WORKERS = 10
MLFLOW_WEBHOOK_TIMEOUT = 30.0
DESIGNS = {"gate": "gate (queue-backed receiver)", "sync": "synchronous in-request handler"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--delays", default="0.5,3", help="seconds added to each MLflow call, one run each"
    )
    parser.add_argument(
        "--durations", default="15,5", help="seconds of load for each delay (the last repeats)"
    )
    parser.add_argument("--rate", type=float, default=2.0, help="webhooks per second")
    parser.add_argument("--models", type=int, default=12, help="models cycled (per design)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn processes (both)")
    parser.add_argument("--threads", type=int, default=4, help="threads per process (both)")
    parser.add_argument("--timeout", type=float, default=MLFLOW_WEBHOOK_TIMEOUT)
    parser.add_argument("--quick", action="store_true", help="0.5 s delay only, 8 s of load")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.delays, args.durations = "0.5", "8"
    delays = [float(d) for d in args.delays.split(",")]
    given = [float(d) for d in args.durations.split(",")]
    durations = [given[min(i, len(given) - 1)] for i in range(len(delays))]
    params = {k: v for k, v in vars(args).items() if k != "keep"}
    load_start, started = os.getloadavg(), time.time()

    runs: list[dict[str, Any]] = []
    proxy: DelayProxy | None = None
    with Stack("slow", keep=args.keep) as stack:
        try:
            stack.start_redis()
            direct = stack.start_mlflow()
            print(f"MLflow {direct}; workdir {stack.workdir}", flush=True)
            # The request tags are set before anything listens: nothing decides them early.
            targets = {
                (design, i): create_versions(
                    direct, f"slow-{design}-{i}", args.models, request="champion"
                )
                for i in range(len(delays))
                for design in ("gate", "sync")
            }
            proxy = DelayProxy(direct, delay=delays[0])
            stack.env["MLFLOW_TRACKING_URI"] = proxy.url  # everyone else sees a slow MLflow
            gate_url = stack.start_receiver(workers=args.workers, threads=args.threads)
            stack.start_worker(concurrency=2)
            sync_port = free_port()
            gunicorn = [
                sys.executable, "-m", "gunicorn", "--chdir", str(BENCH),
                "-k", "gthread", "-w", str(args.workers), "--threads", str(args.threads),
                "--timeout", "30", "-b", f"127.0.0.1:{sync_port}",
                "sync_handler:create_app()",
            ]  # fmt: skip
            stack.start("sync-handler", gunicorn, stack.env)
            sync_url = f"http://127.0.0.1:{sync_port}"
            _wait_listening(stack, sync_url)
            for i, (delay, duration) in enumerate(zip(delays, durations, strict=True)):
                proxy.delay = delay
                spec = {
                    "secret": SECRET,
                    "mode": "rate",
                    "rate": args.rate,
                    "duration": duration,
                    "connections": MLFLOW_DELIVERY_WORKERS,
                    "timeout": args.timeout,
                }
                for design, url, ok in (("gate", gate_url, "202"), ("sync", sync_url, "200")):
                    print(f"{DESIGNS[design]}, MLflow +{delay:g} s a call: {args.rate:g}/s for "
                          f"{duration:g} s ...", flush=True)  # fmt: skip
                    out = run_loadgen(
                        stack,
                        {**spec, "url": f"{url}/webhooks/mlflow", "targets": targets[design, i]},
                        f"{design}-{i}",
                    )
                    stats = latency_stats(out, ok)
                    statuses = stats["statuses"]
                    stats["timed_out"] = statuses.get("timeout", 0)
                    stats["failed"] = sum(
                        v for k, v in statuses.items() if k not in (ok, "timeout")
                    )
                    stats["over_timeout_from_due"] = sum(
                        1 for row in out["results"] if row[1] >= args.timeout
                    )
                    stats.update(design=DESIGNS[design], delay_s=delay, duration_s=duration)
                    runs.append(stats)
            decided = redis.Redis.from_url(stack.redis_url).llen("gate:decisions")
        finally:
            if proxy is not None:
                proxy.close()

    headers = ["MLflow delay", "design", "sent", "answered ok", "p50 ms", "p95 ms", "p99 ms",
               "max ms", f"timed out (>{args.timeout:g} s)", "failed"]  # fmt: skip
    rows = [
        [
            f"{s['delay_s']:g} s/call", s["design"], s["sent"] + s["unsent"], s["acknowledged"],
            ms(s["all_latency_s"]["p50"]), ms(s["all_latency_s"]["p95"]),
            ms(s["all_latency_s"]["p99"]), ms(s["all_latency_s"]["max"]), s["timed_out"],
            s["failed"],
        ]
        for s in runs
    ]  # fmt: skip
    info = machine_info()
    printed = "\n".join(
        [
            f"slow_mlflow: {args.rate:g} webhooks/s over {MLFLOW_DELIVERY_WORKERS} connections "
            f"with a {args.timeout:g} s socket timeout (as MLflow delivers); both served by "
            f"gunicorn {args.workers} x {args.threads} threads; latency of every request sent, "
            "from its due time (a timed-out request counts at its timeout)",
            f"machine: {machine_line(info)}",
            table(headers, rows),
            f"gate decisions recorded by the end (its workers keep going, no timeout applies): "
            f"{decided}",
        ]
    )
    print("\n" + printed)
    path = write_results(
        "slow_mlflow",
        params,
        {
            "runs": runs,
            "gate_decisions_recorded": decided,
            "markdown": markdown_table(headers, rows),
        },
        load_start=load_start,
        started=started,
        printed=printed,
    )
    print(f"\nresults: {path}")


def _wait_listening(stack: Stack, url: str) -> None:
    def up() -> bool:
        try:
            requests.get(url, timeout=1)  # 404 or 405 is fine: gunicorn answers
            return True
        except requests.RequestException:
            return False

    wait_until(up, 30, interval=0.1, what="the sync handler")


if __name__ == "__main__":
    main()
