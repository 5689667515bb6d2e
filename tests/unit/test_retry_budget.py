"""The retry budget is GATE_RETRY_MAX_ATTEMPTS, not Celery's default of three retries: Celery
reads `task.retry(max_retries=None)` as "the task's own max_retries", so the tasks themselves
must have none, or an event is dead-lettered after its 4th attempt (a minute of MLflow outage
instead of the hour the defaults promise)."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.exceptions import Retry

from worker.delivery import deliver
from worker.tasks import reconcile


@pytest.mark.parametrize("task", [reconcile, deliver], ids=["reconcile", "deliver"])
def test_a_task_may_retry_past_celerys_default_of_three(task: object) -> None:
    app = Celery("budget", broker="memory://")
    bound = app.tasks[task.name]  # type: ignore[attr-defined]
    assert bound.max_retries is None
    bound.push_request(
        retries=10, called_directly=False, id="t-1", delivery_info={}, args=[{}], kwargs={}
    )
    try:
        # With a default max_retries of 3, the 11th attempt would raise the error itself.
        with pytest.raises(Retry):
            bound.retry(exc=RuntimeError("MLflow down"), countdown=60, max_retries=None)
    finally:
        bound.pop_request()
