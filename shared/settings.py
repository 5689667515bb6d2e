"""One settings object, built once from the environment and passed in explicitly."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    mlflow_tracking_uri: str = "http://localhost:5000"
    mlflow_token: str | None = None
    mlflow_username: str | None = None
    mlflow_password: str | None = None
    mlflow_insecure_tls: bool = False
    mlflow_timeout_seconds: float = 10.0
    redis_url: str = "redis://localhost:6379/0"
    webhook_secret: str | None = None
    allow_unsigned: bool = False
    policy_file: Path | None = None
    # 16 attempts, 10 s doubling up to 300 s: about 55 minutes of MLflow outage ridden out.
    retry_max_attempts: int = 16
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 300.0
    dedupe_ttl_seconds: int = 86_400
    log_level: str = "INFO"
    log_format: str = "auto"  # json | text | auto (text on a terminal)
    worker_metrics_port: int = 9808  # 0: no metrics endpoint on the worker
    flower_user: str | None = None
    flower_password: str | None = None
    admin_token: str | None = None
    # A message redelivered this often because its worker died is dead-lettered (poison).
    max_deliveries: int = 5
    redrive_enabled: bool = True
    redrive_interval_seconds: float = 60.0
    redrive_batch: int = 50
    sweep_interval_seconds: float = 300.0
    # Decisions for one model are serialised by a lock that expires by itself, so that a worker
    # killed while holding it blocks that model for this long at most. Longer than a reconcile.
    model_lock_seconds: float = 60.0
    # Databricks workspace model registry (transition requests); all optional.
    databricks_host: str | None = None
    databricks_token: str | None = None
    databricks_webhook_secret: str | None = None
    databricks_webhook_authorization: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        policy_file = env.get("GATE_POLICY_FILE") or None
        settings = cls(
            mlflow_tracking_uri=(env.get("MLFLOW_TRACKING_URI") or cls.mlflow_tracking_uri).rstrip(
                "/"
            ),
            mlflow_token=env.get("MLFLOW_TRACKING_TOKEN") or None,
            mlflow_username=env.get("MLFLOW_TRACKING_USERNAME") or None,
            mlflow_password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
            mlflow_insecure_tls=_bool(env, "MLFLOW_TRACKING_INSECURE_TLS", False),
            mlflow_timeout_seconds=_number(env, "GATE_MLFLOW_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            redis_url=env.get("GATE_REDIS_URL") or cls.redis_url,
            webhook_secret=env.get("GATE_WEBHOOK_SECRET") or None,
            allow_unsigned=_bool(env, "GATE_ALLOW_UNSIGNED", False),
            policy_file=Path(policy_file) if policy_file else None,
            retry_max_attempts=int(
                _number(env, "GATE_RETRY_MAX_ATTEMPTS", 16, minimum=1, whole=True)
            ),
            retry_backoff_seconds=_number(env, "GATE_RETRY_BACKOFF_SECONDS", 10.0, minimum=0),
            retry_backoff_max_seconds=_number(
                env, "GATE_RETRY_BACKOFF_MAX_SECONDS", 300.0, minimum=0
            ),
            dedupe_ttl_seconds=int(
                _number(env, "GATE_DEDUPE_TTL_SECONDS", 86_400, minimum=1, whole=True)
            ),
            log_level=(env.get("GATE_LOG_LEVEL") or "INFO").upper(),
            log_format=(env.get("GATE_LOG_FORMAT") or "auto").lower(),
            worker_metrics_port=int(
                _number(env, "GATE_WORKER_METRICS_PORT", 9808, minimum=0, whole=True)
            ),
            flower_user=env.get("GATE_FLOWER_USER") or None,
            flower_password=env.get("GATE_FLOWER_PASSWORD") or None,
            admin_token=env.get("GATE_ADMIN_TOKEN") or None,
            max_deliveries=int(_number(env, "GATE_MAX_DELIVERIES", 5, minimum=1, whole=True)),
            redrive_enabled=_bool(env, "GATE_REDRIVE_ENABLED", True),
            redrive_interval_seconds=_number(
                env, "GATE_REDRIVE_INTERVAL_SECONDS", 60.0, minimum=0.1
            ),
            redrive_batch=int(_number(env, "GATE_REDRIVE_BATCH", 50, minimum=1, whole=True)),
            sweep_interval_seconds=_number(env, "GATE_SWEEP_INTERVAL_SECONDS", 300.0, minimum=0.1),
            model_lock_seconds=_number(env, "GATE_MODEL_LOCK_SECONDS", 60.0, minimum=1),
            databricks_host=(env.get("GATE_DATABRICKS_HOST") or "").strip().rstrip("/") or None,
            databricks_token=env.get("GATE_DATABRICKS_TOKEN") or None,
            databricks_webhook_secret=env.get("GATE_DATABRICKS_WEBHOOK_SECRET") or None,
            databricks_webhook_authorization=(
                env.get("GATE_DATABRICKS_WEBHOOK_AUTHORIZATION") or None
            ),
        )
        _check_databricks(settings)
        if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):
            raise ConfigError(
                f"MLFLOW_TRACKING_URI={settings.mlflow_tracking_uri!r} is not an http(s) URL; "
                "point it at the MLflow tracking server, e.g. http://localhost:5000"
            )
        if settings.retry_backoff_max_seconds < settings.retry_backoff_seconds:
            raise ConfigError(
                f"GATE_RETRY_BACKOFF_MAX_SECONDS={settings.retry_backoff_max_seconds:g} is below "
                f"GATE_RETRY_BACKOFF_SECONDS={settings.retry_backoff_seconds:g}; raise the maximum"
            )
        if settings.log_format not in {"auto", "json", "text"}:
            raise ConfigError(
                f"GATE_LOG_FORMAT={settings.log_format!r} is not one of auto, json, text"
            )
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"GATE_LOG_LEVEL={settings.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR"
            )
        return settings

    def require_webhook_secret(self) -> None:
        """The receiver refuses to start without a secret, unless unsigned mode is asked for.

        A receiver for Databricks only (GATE_DATABRICKS_WEBHOOK_SECRET or _AUTHORIZATION set)
        starts without GATE_WEBHOOK_SECRET; its MLflow route then refuses every webhook (401).
        """
        databricks = self.databricks_webhook_secret or self.databricks_webhook_authorization
        if not self.webhook_secret and not self.allow_unsigned and not databricks:
            raise ConfigError(
                "GATE_WEBHOOK_SECRET is not set: the receiver cannot verify that webhooks come "
                "from MLflow. Set it to the secret the webhook was registered with "
                "(GATE_ALLOW_UNSIGNED=true skips verification, for development only)."
            )

    def retry_delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (1-based), without jitter."""
        delay = self.retry_backoff_seconds * (2 ** min(max(attempt - 1, 0), 62))
        return float(min(delay, self.retry_backoff_max_seconds))


def _check_databricks(settings: Settings) -> None:
    host = settings.databricks_host
    if host is not None and not host.startswith(("http://", "https://")):
        raise ConfigError(
            f"GATE_DATABRICKS_HOST={host!r} is not an http(s) URL; give the workspace URL, "
            "e.g. https://adb-1234567890123456.7.azuredatabricks.net"
        )
    if host is not None and not settings.databricks_token:
        raise ConfigError(
            "GATE_DATABRICKS_HOST is set but GATE_DATABRICKS_TOKEN is not: the gate needs a "
            "token allowed to approve transition requests (a service principal's, ideally)"
        )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, whole: bool = False
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name}={raw!r} is not {kind}; e.g. {name}={default:g}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number; e.g. {name}={default:g}")
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} is below the minimum of {minimum:g}")
    return value
