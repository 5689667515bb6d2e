"""End to end: from `governance.request` set in a real MLflow to the decision visible in MLflow.

Starts a private MLflow (SQLite; and, in a second run, PostgreSQL with 2 server processes, where
workers can scale), Redis, the receiver and, in turn, a worker with 1, 2 and 4
processes (`--concurrency`). For each, N model versions (each of its own registered model, so
that they do not wait on the per-model lock) get `governance.request=champion` one after the
other; MLflow's own webhooks drive the gate, and every `--poll` seconds (0.05 s) one query of
MLflow's own database (`StoreWatch`: the committed rows its API would return, without loading
the MLflow server that the gate and the baseline share) reads which versions carry
`governance.status`. Latency: from just before the tag-setting call to the first poll that sees
the status. Throughput: N over first tag set to last decision seen. Also `--unloaded` requests
one at a time (set, wait for the decision, next): the latency without queueing.

Beside it, the baseline: the same facts fetched and the same decision applied by a plain
sequential loop in this process, calling MLflow directly with the gate's own code
(worker.pipeline.Pipeline: the MLflow registry, facts.gather, evaluation.evaluate,
decisions.record), without webhooks, queue or Redis, run just before each gate run (MLflow's
webhooks turned off meanwhile) on versions of its own, so that each ratio compares two runs made
under the same load on the machine. The ratio of the per-decision times is the gate's overhead.

    python bench/e2e.py [--quick] [-n 30] [--workers 1,2,4] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from typing import Any

import redis
from _stack import (
    REQUEST_TAG,
    Stack,
    StoreWatch,
    create_versions,
    group_cpu_seconds,
    machine_info,
    machine_line,
    markdown_table,
    ms,
    scratch_ledger,
    settings_for,
    summary,
    table,
    wait_until,
    write_results,
)

from shared.events import GateEvent, Kind, Origin, RegistryKind
from shared.policy import load_policies
from worker.pipeline import Pipeline
from worker.registries import Registries, mlflow
from worker.registries.endpoints import Endpoints
from worker.rest import RestClient


class CountingRest(RestClient):
    """The gate's REST client, counting its calls by method and path."""

    calls: collections.Counter[str]

    def call(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        method, path = args[0], str(args[1])
        self.calls[f"{method} {path.removeprefix('/api/2.0/mlflow/')}"] += 1
        return super().call(*args, **kwargs)


# The calls whose change MLflow sends to the gate's webhook (it subscribes to version tag sets and
# alias sets and deletions; a registered model's tag set sends none): one webhook back each.
WEBHOOK_CALLS = (
    "POST model-versions/set-tag",
    "POST registered-models/alias",
    "DELETE registered-models/alias",
)


def webhooks_back(calls: dict[str, float]) -> float:
    """Webhooks MLflow sends back per decision for the decision's own writes."""
    return sum(v for k, v in calls.items() if k in WEBHOOK_CALLS)


def endpoints(uri: str) -> Endpoints:
    return Endpoints(RestClient(mlflow.service(settings_for(uri))))


def request_event(model: str, version: str, event_id: str) -> GateEvent:
    return GateEvent(event_id, RegistryKind.MLFLOW, Origin.OPERATOR, Kind.REQUEST, model,
                     version, "champion", time.time(), "bench")  # fmt: skip


def baseline(
    stack: Stack, versions: list[tuple[str, str]], *, asked_again: bool = True
) -> dict[str, Any]:
    api = CountingRest(mlflow.service(settings_for(stack.mlflow_uri)))
    api.calls = collections.Counter()
    registries = Registries({RegistryKind.MLFLOW: mlflow.MlflowRegistry(api)})
    pipeline = Pipeline(registries, load_policies(stack.policy_file), scratch_ledger())
    plain = endpoints(stack.mlflow_uri)
    times: list[float] = []
    outcomes: collections.Counter[str] = collections.Counter()
    cpu_before = _cpu(stack)
    own_cpu = time.process_time()
    begin = time.perf_counter()
    for i, (model, version) in enumerate(versions):
        t = time.perf_counter()
        # From the request set to the decision shown, as the gate's runs are timed (MLflow's
        # webhooks are off: nobody else sees this request)
        plain.set_version_tag(model, version, REQUEST_TAG, "champion")
        outcome = pipeline.handle(request_event(model, version, f"baseline-{i}"))
        times.append(time.perf_counter() - t)
        outcomes["approved" if " approved " in outcome else outcome] += 1
    total = time.perf_counter() - begin
    n = len(versions)
    cpu = _cpu_delta(stack, cpu_before, n)
    cpu["baseline script"] = round((time.process_time() - own_cpu) * 1000 / n, 1)
    first = {k: v / n for k, v in sorted(api.calls.items())}
    again: dict[str, float] = {}
    if asked_again:
        # The same requests asked again (governance.request set again to the same target): what
        # a decision costs when most of its tags do not change.
        for model, version in versions:
            plain.set_version_tag(model, version, REQUEST_TAG, "champion")
        api.calls.clear()
        for i, (model, version) in enumerate(versions):
            pipeline.handle(request_event(model, version, f"baseline-again-{i}"))
        again = {k: v / n for k, v in sorted(api.calls.items())}
    return {
        "asked_again_mlflow_calls_per_decision": again,
        "asked_again_mlflow_calls_total_per_decision": sum(again.values()),
        "asked_again_webhooks_back_per_decision": webhooks_back(again),
        "webhooks_back_per_decision": webhooks_back(first),
        "cpu_ms_per_decision": cpu,
        "decisions": n,
        "outcomes": dict(outcomes),
        "total_s": round(total, 3),
        "per_decision_s": summary(times),
        "decisions_per_s": round(n / total, 2),
        "mlflow_calls_per_decision": first,
        "mlflow_calls_total_per_decision": sum(first.values()),
    }


def gate_round(
    stack: Stack, r: redis.Redis, versions: list[tuple[str, str]], prefix: str, poll: float
) -> dict[str, Any]:
    api = endpoints(stack.mlflow_uri)
    set_at: dict[tuple[str, str], float] = {}
    seen_at: dict[tuple[str, str], float] = {}
    statuses: dict[tuple[str, str], str] = {}
    before = r.info("commandstats")
    webhooks_before = _webhooks_received(stack)
    mlflow_before = _mlflow_requests(stack)
    cpu_before = _cpu(stack)
    first = time.time()
    for model, version in versions:
        set_at[(model, version)] = time.time()
        api.set_version_tag(model, version, REQUEST_TAG, "champion")
    deadline = time.time() + 60 + 5 * len(versions)
    watch = StoreWatch(stack.mlflow_store_uri)
    while len(seen_at) < len(versions) and time.time() < deadline:
        now = time.time()
        for key, status in watch.decided(prefix).items():
            if key not in seen_at:
                seen_at[key] = now
                statuses[key] = status
        time.sleep(poll)
    last = max(seen_at.values(), default=first)
    watch.close()
    # The queue drains: the alias webhooks that the approvals caused are decided too.
    wait_until(lambda: r.llen("gate.events") == 0 and not r.hlen("unacked"), 60, what="idle")
    after = r.info("commandstats")
    latencies = [seen_at[k] - set_at[k] for k in seen_at]
    n = len(versions)
    by_command = {
        k.removeprefix("cmdstat_"): int(v["calls"]) - int(before.get(k, {}).get("calls", 0))
        for k, v in after.items()
    }
    redis_cmds = sum(by_command.values())
    cpu = _cpu_delta(stack, cpu_before, max(len(seen_at), 1))
    webhooks = _webhooks_received(stack) - webhooks_before
    return {
        "mlflow_requests_seen": _mlflow_requests(stack) - mlflow_before,
        "decisions": len(seen_at),
        "undecided": n - len(seen_at),
        "outcomes": dict(collections.Counter(statuses.values())),
        "tag_setting_s": round(max(set_at.values()) - first, 3),
        "window_s": round(last - first, 3),
        "latency_s": summary(latencies),
        "decisions_per_s": round(len(seen_at) / (last - first), 2) if last > first else None,
        "per_decision_s": (last - first) / len(seen_at) if seen_at else None,
        "redis_commands_per_decision": round(redis_cmds / max(len(seen_at), 1), 1),
        "cpu_ms_per_decision": cpu,
        "store_polls": watch.polls,
        "redis_commands_by_name": {k: v for k, v in sorted(by_command.items()) if v},
        "webhooks_received_per_decision": round(webhooks / max(len(seen_at), 1), 2),
    }


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each of the stack's process groups (MLflow, Redis, ...)."""
    return {name: group_cpu_seconds(proc) for name, proc in stack.processes.items()}


def _cpu_delta(stack: Stack, before: dict[str, float], n: int) -> dict[str, float]:
    now = _cpu(stack)
    return {
        name.split("-")[0]: round((now[name] - before.get(name, 0.0)) * 1000 / n, 1) for name in now
    }


def unloaded(stack: Stack, versions: list[tuple[str, str]], poll: float) -> dict[str, Any]:
    """One request at a time: set the tag, wait for the decision, then the next."""
    api = endpoints(stack.mlflow_uri)
    watch = StoreWatch(stack.mlflow_store_uri)
    latencies: list[float] = []
    for model, version in versions:

        def decided(key: tuple[str, str] = (model, version)) -> bool:
            return key in watch.decided(key[0].rsplit("-", 1)[0])

        t = time.time()
        api.set_version_tag(model, version, REQUEST_TAG, "champion")
        wait_until(decided, 60, poll, "a decision")
        latencies.append(time.time() - t)
    watch.close()
    return {"decisions": len(latencies), "latency_s": summary(latencies)}


def _mlflow_requests(stack: Stack) -> int:
    """Requests MLflow served so far, from its server's access log (0 if it keeps none)."""
    log: str = stack.processes["mlflow"].log_tail(50_000_000)
    return log.count("/api/2.0/mlflow/")


def _webhooks_received(stack: Stack) -> int:
    """POSTs to the receiver so far, from its gunicorn access log."""
    log: str = stack.processes["receiver"].log_tail(50_000_000)
    return log.count("POST /webhooks/mlflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="promotion requests per round")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="MLflow's backend store, one run each"
    )
    parser.add_argument(
        "--mlflow-workers", type=int, default=2, help="MLflow server processes on PostgreSQL"
    )
    parser.add_argument(
        "--poll", type=float, default=0.05, help="seconds between reads of MLflow's database"
    )
    parser.add_argument(
        "--poll-unloaded", type=float, default=0.05, help="the same, one request at a time"
    )
    parser.add_argument(
        "--unloaded", type=int, default=10, help="requests one at a time, 1st worker count"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs (baseline, then gate) per worker count"
    )
    parser.add_argument("--quick", action="store_true", help="n=10, unloaded 5, 1 run")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.unloaded, args.repeat = 10, 5, 1
    counts = [int(c) for c in args.workers.split(",") if c.strip()]
    backends = [b for b in args.backends.split(",") if b in ("sqlite", "postgresql")]
    params = {k: v for k, v in vars(args).items() if k != "keep"}
    load_start, started = os.getloadavg(), time.time()

    runs = {b: run_backend(b, args, counts) for b in backends}
    info = machine_info()
    printed_parts = [
        f"e2e: {args.n} promotion requests per round, tag set -> governance.status visible "
        f"(MLflow's database read every {args.poll:g} s, {args.poll_unloaded:g} s one at a time, "
        "not its API); baseline latency is one decision's own time",
        f"machine: {machine_line(info)}",
    ]
    results: dict[str, Any] = {}
    for backend, (bases, rounds, single) in runs.items():
        text, markdown = report(backend, args, bases, rounds, single)
        printed_parts.append(text)
        results[backend] = {
            "baselines": bases,
            "gate": rounds,
            "unloaded": single,
            **markdown,
        }
    printed = "\n\n".join(printed_parts)
    print("\n" + printed)
    path = write_results("e2e", params, results, load_start=load_start, started=started,
                         printed=printed)  # fmt: skip
    print(f"\nresults: {path}")


def run_backend(
    backend: str, args: argparse.Namespace, counts: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Against one MLflow (SQLite, or PostgreSQL of its own), for each worker count, `--repeat`
    times: a baseline run with MLflow's webhooks off, then the gate's run, side by side in time,
    so that each ratio compares two runs made under the same load on the machine."""
    bases: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    single: dict[str, Any] = {}
    postgres = None
    with Stack(f"e2e-{backend}", keep=args.keep) as stack:
        try:
            stack.start_redis()
            if backend == "postgresql":
                from postgres import start_postgres

                postgres = start_postgres()
                postgres.create_database("mlflow")
                stack.start_mlflow(postgres.url("mlflow"), workers=args.mlflow_workers)
            else:
                stack.start_mlflow()
            stack.start_receiver()
            print(f"[{backend}] MLflow {stack.mlflow_uri}; workdir {stack.workdir}", flush=True)
            r = redis.Redis.from_url(stack.redis_url)
            runs = [(c, k) for c in counts for k in range(args.repeat)]
            print(f"[{backend}] creating {args.n * 2 * len(runs)} versions ...", flush=True)
            uri = stack.mlflow_uri
            versions = {
                (design, c, k): create_versions(uri, f"e2e-{design}{c}r{k}", args.n)
                for c, k in runs
                for design in ("base", "gate")
            }
            single_versions = create_versions(uri, "e2e-single", args.unloaded)
            stack.register_webhook()
            for c in counts:
                proc = stack.start_worker(f"worker-c{c}", concurrency=c)
                for k in range(args.repeat):
                    print(f"[{backend}] {c} worker process(es), run {k + 1} of {args.repeat}: "
                          "the baseline (webhooks off), then the gate ...", flush=True)  # fmt: skip
                    stack.webhooks_active(False)
                    base = baseline(stack, versions[("base", c, k)], asked_again=not bases)
                    stack.webhooks_active(True)
                    base.update(worker_processes=c, run=k, backend=backend)
                    base["mlflow_workers"] = args.mlflow_workers if backend == "postgresql" else 1
                    bases.append(base)
                    if c == counts[0] and k == 0 and single_versions:
                        single = unloaded(stack, single_versions, args.poll_unloaded)
                        single["worker_processes"] = c
                    tasks_before = proc.log_tail(50_000_000).count("succeeded in")
                    prefix = f"e2e-gate{c}r{k}"
                    result = gate_round(stack, r, versions[("gate", c, k)], prefix, args.poll)
                    tasks = proc.log_tail(50_000_000).count("succeeded in") - tasks_before
                    result.update(tasks_succeeded=tasks, worker_processes=c, run=k)
                    result["vs_baseline"] = _ratio(result, base)
                    rounds.append(result)
                stack.stop(f"worker-c{c}")
        finally:
            if postgres is not None:
                stack.stop("mlflow")
                postgres.stop()
    return bases, rounds, single


def _ratio(gate: dict[str, Any], base: dict[str, Any]) -> float | None:
    per, per_base = gate["per_decision_s"], base["per_decision_s"]["mean"]
    return round(per / per_base, 3) if per and per_base else None


def report(
    backend: str,
    args: argparse.Namespace,
    bases: list[dict[str, Any]],
    rounds: list[dict[str, Any]],
    single: dict[str, Any],
) -> tuple[str, dict[str, str]]:
    headers = ["worker processes", "runs", "baseline ms/dec", "gate ms/dec", "vs baseline",
               "each run", "gate dec/s", "p50 ms", "p99 ms", "tasks/dec", "webhooks/dec",
               "MLflow req/dec", "Redis cmds/dec"]  # fmt: skip
    rows: list[list[object]] = []
    cpu_headers = ["design", "redis", "mlflow", "receiver", "baseline script", "worker"]
    cpu_rows: list[list[object]] = []
    for c in sorted({g["worker_processes"] for g in rounds}):
        gates = [g for g in rounds if g["worker_processes"] == c]
        own = [b for b in bases if b["worker_processes"] == c]
        ratios = [g["vs_baseline"] for g in gates if g["vs_baseline"]]
        # MLflow's requests in a round, less the benchmark's own tag sets (its polls read
        # MLflow's database, not its API)
        calls = [
            (g["mlflow_requests_seen"] - g["decisions"] - g["undecided"]) / max(g["decisions"], 1)
            for g in gates
            if g["mlflow_requests_seen"]
        ]
        rows.append(
            [c, len(gates), ms(_median(b["per_decision_s"]["mean"] for b in own)),
             ms(_median(g["per_decision_s"] for g in gates if g["per_decision_s"])),
             f"{_median(ratios):.2f}x" if ratios else "-",
             " ".join(f"{r:.2f}" for r in ratios),
             _median(g["decisions_per_s"] for g in gates if g["decisions_per_s"]),
             ms(_median(g["latency_s"]["p50"] for g in gates)),
             ms(_median(g["latency_s"]["p99"] for g in gates)),
             round(_median(g["tasks_succeeded"] / max(g["decisions"], 1) for g in gates), 2),
             _median(g["webhooks_received_per_decision"] for g in gates),
             round(_median(calls), 2) if calls else "-",
             _median(g["redis_commands_per_decision"] for g in gates)]
        )  # fmt: skip
        for design, group in ((f"baseline ({c} proc. runs)", own), (f"gate, {c} proc.", gates)):
            cpu_rows.append(
                [design, *(_median(x["cpu_ms_per_decision"].get(k, 0.0) for x in group)
                           for k in cpu_headers[1:])]
            )  # fmt: skip
    first = bases[0] if bases else {}
    lines = [
        f"== MLflow on {backend} ({_servers(first)}); medians of {args.repeat} run(s), each "
        "gate run right after its own baseline run",
        table(headers, rows),
    ]
    if single:
        lat = single["latency_s"]
        lines.append(
            f"gate, one request at a time ({single['worker_processes']} proc.): "
            f"{single['decisions']} decisions, p50 {ms(lat['p50'])} ms, p99 {ms(lat['p99'])} ms"
        )
    lines += ["CPU ms per decision, by process group:", table(cpu_headers, cpu_rows)]
    if first:
        calls_text = ", ".join(f"{k} x{v:g}" for k, v in first["mlflow_calls_per_decision"].items())
        again = ", ".join(
            f"{k} x{v:g}" for k, v in first["asked_again_mlflow_calls_per_decision"].items()
        )
        lines += [
            f"MLflow calls per decision (baseline and worker run the same code): "
            f"{first['mlflow_calls_total_per_decision']:g} ({calls_text}); webhooks back for "
            f"its writes: {first['webhooks_back_per_decision']:g} (+1: the request's own)",
            f"the same requests asked again: "
            f"{first['asked_again_mlflow_calls_total_per_decision']:g} ({again}); webhooks back "
            f"for its writes: {first['asked_again_webhooks_back_per_decision']:g}",
        ]
    markdown = {
        "markdown": markdown_table(headers, rows),
        "cpu_markdown": markdown_table(cpu_headers, cpu_rows),
    }
    return "\n".join(lines), markdown


def _median(values: Any) -> float:
    found = sorted(float(v) for v in values)
    if not found:
        return 0.0
    mid = len(found) // 2
    return found[mid] if len(found) % 2 else (found[mid - 1] + found[mid]) / 2


def _servers(base: dict[str, Any]) -> str:
    workers = int(base.get("mlflow_workers", 1))
    return f"{workers} server process{'es' if workers > 1 else ''}"


if __name__ == "__main__":
    main()
