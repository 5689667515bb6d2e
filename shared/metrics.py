"""Prometheus plumbing shared by the receiver and the worker, both of which fork processes
(gunicorn workers, Celery pool processes): metrics are kept in prometheus_client's
multiprocess mode, in one directory per service, and served by one registry that reads them all.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus_client reads its mode at import: import it only after preparing
    from prometheus_client import CollectorRegistry

_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own setting, read at import


def prepare_multiprocess_dir(service: str) -> Path:
    """Before any process of the service forks or imports metrics: a fresh, empty directory."""
    existing = os.environ.get(_DIR_VARIABLE)
    if existing:
        path = Path(existing)
    else:
        path = Path(tempfile.gettempdir()) / f"mlflow-gate-metrics-{service}-{os.getpid()}"
        os.environ[_DIR_VARIABLE] = str(path)
        atexit.register(_remove_if_owner, path, os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove_if_owner(path: Path, owner: int) -> None:
    """At exit, the process that made the directory removes it; forked children inherit this
    handler and must leave it alone."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def multiprocess_registry() -> CollectorRegistry:
    """All processes' metrics when in multiprocess mode; else this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get(_DIR_VARIABLE):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def mark_process_dead(pid: int) -> None:
    if os.environ.get(_DIR_VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
