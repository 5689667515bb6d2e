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
            admin_token=env.get("GATE_ADMIN_TOKEN") or None,
            max_deliveries=int(_number(env, "GATE_MAX_DELIVERIES", 5, minimum=1, whole=True)),
            redrive_enabled=_bool(env, "GATE_REDRIVE_ENABLED", True),
            redrive_interval_seconds=_number(
                env, "GATE_REDRIVE_INTERVAL_SECONDS", 60.0, minimum=0.1
            ),
            redrive_batch=int(_number(env, "GATE_REDRIVE_BATCH", 50, minimum=1, whole=True)),
            sweep_interval_seconds=_number(env, "GATE_SWEEP_INTERVAL_SECONDS", 300.0, minimum=0.1),
            model_lock_seconds=_number(env, "GATE_MODEL_LOCK_SECONDS", 60.0, minimum=1),
        )
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
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"GATE_LOG_LEVEL={settings.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR"
            )
        return settings

    def require_webhook_secret(self) -> None:
        """The receiver refuses to start without a secret, unless unsigned mode is asked for."""
        if not self.webhook_secret and not self.allow_unsigned:
            raise ConfigError(
                "GATE_WEBHOOK_SECRET is not set: the receiver cannot verify that webhooks come "
                "from MLflow. Set it to the secret the webhook was registered with "
                "(GATE_ALLOW_UNSIGNED=true skips verification, for development only)."
            )

    def retry_delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (1-based), without jitter."""
        delay = self.retry_backoff_seconds * (2 ** min(max(attempt - 1, 0), 62))
        return float(min(delay, self.retry_backoff_max_seconds))


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
