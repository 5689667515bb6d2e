"""`mlflow-gate webhook register`: the MLflow webhook that feeds the gate, created or updated."""

from __future__ import annotations

from shared.errors import ConfigError
from shared.events import SUBSCRIBED
from shared.settings import Settings
from worker.mlflow_api import MlflowApi


def register(settings: Settings, *, url: str, name: str) -> str:
    """Make the webhook named `name` point at `url`, signed, for the gate's events."""
    if not settings.webhook_secret:
        raise ConfigError(
            "GATE_WEBHOOK_SECRET is not set: the webhook must be registered with the secret the "
            "receiver verifies; set it in this environment and the receiver's"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} must be an http(s) URL ending in /webhooks/mlflow")
    api = MlflowApi(settings)
    events = [
        {"entity": entity.upper(), "action": action.upper()}
        for entity, action in (e.split(".") for e in SUBSCRIBED)
    ]
    spec = {
        "name": name,
        "url": url,
        "events": events,
        "secret": settings.webhook_secret,
        "status": "ACTIVE",
        "description": "mlflow-gate: governance decisions for model promotions",
    }
    existing = [h for h in api.list_webhooks() if h.get("name") == name]
    listed = ", ".join(SUBSCRIBED)
    if existing:
        hook = api.update_webhook(str(existing[0]["webhook_id"]), spec)
        verb = "updated"
    else:
        hook = api.create_webhook(spec)
        verb = "created"
    return (
        f"{verb} webhook '{name}' (id {hook.get('webhook_id')}) at "
        f"{settings.mlflow_tracking_uri}: {url} for {listed}, signed with GATE_WEBHOOK_SECRET"
    )
