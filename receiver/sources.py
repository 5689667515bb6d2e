"""The table of inbound webhook sources: which exist, how each is verified, named and parsed.

The only module of the receiver that knows the registries by name; the rest handles any source
alike (receiver/webhooks.py).
"""

from __future__ import annotations

from receiver.webhooks import Refuse, Source, Verifier
from shared import databricks, signing
from shared.events import RegistryKind, parse_mlflow_webhook
from shared.settings import Settings


def inbound_sources(settings: Settings) -> tuple[Source, ...]:
    return tuple(s for s in (_mlflow(settings), _databricks(settings)) if s is not None)


def _mlflow(settings: Settings) -> Source:
    """Always routed. Without GATE_WEBHOOK_SECRET (a receiver for Databricks alone) it refuses
    every webhook, unless unsigned mode is asked for."""
    verifier: Verifier | None = None
    if settings.webhook_secret:
        verifier = signing.MlflowVerifier(settings.webhook_secret)
    elif not settings.allow_unsigned:
        verifier = Refuse(
            "this receiver has no GATE_WEBHOOK_SECRET, so it takes no MLflow webhooks"
        )
    return Source(
        name=RegistryKind.MLFLOW.value,
        verifier=verifier,
        event_id_of=signing.event_id_of,
        parse=parse_mlflow_webhook,
    )


def _databricks(settings: Settings) -> Source | None:
    """Routed only with a Databricks webhook secret or Authorization value (or in unsigned
    development mode); otherwise POST /webhooks/databricks does not exist (404)."""
    section = settings.databricks
    verifier: Verifier | None = None
    if section is not None and section.verifies_webhooks:
        verifier = databricks.DatabricksVerifier(
            section.webhook_secret, section.webhook_authorization
        )
    elif not settings.allow_unsigned:
        return None
    return Source(
        name=RegistryKind.DATABRICKS.value,
        verifier=verifier,
        event_id_of=databricks.event_id_of,
        parse=databricks.parse_webhook,
    )
