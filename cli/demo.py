"""`mlflow-gate demo`: a model with a version that passes and one that fails, promoted through
the gate, each outcome printed as it happens with its reason."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from mlflow import MlflowClient

from shared import tags
from shared.settings import Settings

DEMO_METRICS = {"passes": 0.95, "fails": 0.72}


def demo(settings: Settings, echo: Callable[[str], None], timeout: float = 90) -> int:
    with _credentials(settings):
        return _demo(settings, echo, timeout)


@contextlib.contextmanager
def _credentials(settings: Settings) -> Iterator[None]:
    """MLflow's client takes its credentials from the environment alone: lend it the gate's
    (those of MLFLOW_TRACKING_URI's user:password@ among them) for the demo's duration."""
    lent = {
        "MLFLOW_TRACKING_TOKEN": settings.mlflow_token,
        "MLFLOW_TRACKING_USERNAME": settings.mlflow_username,
        "MLFLOW_TRACKING_PASSWORD": settings.mlflow_password,
    }
    added = {k: v for k, v in lent.items() if v and k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _demo(settings: Settings, echo: Callable[[str], None], timeout: float) -> int:
    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = f"demo-classifier-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = client.get_experiment_by_name("mlflow-gate-demo")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("mlflow-gate-demo")
    )
    client.create_registered_model(model, description="made by mlflow-gate demo")
    echo(f"demo: registered model {model} at {uri}")
    versions: dict[str, str] = {}
    for label, accuracy in DEMO_METRICS.items():
        run = client.create_run(experiment_id, run_name=f"demo-{label}")
        run_id = run.info.run_id
        client.log_metric(run_id, "validation_accuracy", accuracy)
        client.log_metric(run_id, "val_auc", accuracy)
        client.set_tag(run_id, "data_version", "demo-v1")
        client.set_tag(run_id, "git_commit", "0000000")
        client.set_terminated(run_id)
        mv = client.create_model_version(
            model, source=f"runs:/{run_id}/model", run_id=run_id,
            description=f"demo version that {label} (validation_accuracy {accuracy})",
        )  # fmt: skip
        versions[label] = mv.version
        echo(f"demo: version {mv.version}: validation_accuracy {accuracy}")
    for version in versions.values():
        echo(f"demo: requesting champion for version {version} ({tags.REQUEST}=champion)")
        client.set_model_version_tag(model, version, tags.REQUEST, "champion")
        # One after the other: the second is compared with the first once it is champion.
        outcome = _wait_for_decision(client, model, version, timeout)
        if outcome is None:
            echo(f"demo: version {version}: no decision after {timeout:g} s; is a worker "
                 "running and the webhook registered? (mlflow-gate status)")  # fmt: skip
            return 1
        status, reason = outcome
        echo(f"demo: version {version}: {status.upper()}: {reason}")
    holder = client.get_registered_model(model).aliases.get("champion")
    echo(f"demo: champion is now version {holder}")
    expected = holder == versions["passes"]
    return 0 if expected else 1


def _wait_for_decision(
    client: MlflowClient, model: str, version: str, timeout: float
) -> tuple[str, str] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version_tags = client.get_model_version(model, version).tags
        if tags.STATUS in version_tags:
            return version_tags[tags.STATUS], version_tags.get(tags.REASON, "")
        time.sleep(0.5)
    return None
