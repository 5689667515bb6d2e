"""One settings object, built once from the environment and passed in explicitly.

Each default is written once, on the field; `from_env` reads each variable through a small table
of parsers that fall back to the field's default.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared import database_url
from shared.errors import ConfigError
from shared.urls import redacted, split_credentials

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class DatabricksSettings:
    """A second registry: the workspace model registry of GATE_DATABRICKS_HOST (transition
    requests, registry webhooks). Absent from Settings when none of its variables is set."""

    host: str | None = None  # None: the workers do not talk to a workspace
    token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_authorization: str | None = field(default=None, repr=False)

    @property
    def has_workspace(self) -> bool:
        """The workers decide this registry's events (host and token set)."""
        return self.host is not None

    @property
    def verifies_webhooks(self) -> bool:
        return bool(self.webhook_secret or self.webhook_authorization)


@dataclass(frozen=True)
class Settings:
    # Secrets, and URLs that may hold one, are kept out of repr.
    # The tracking server's URL, without credentials: user:password@ in MLFLOW_TRACKING_URI is
    # taken out of it into mlflow_username and mlflow_password (see with_tracking_uri).
    mlflow_tracking_uri: str = "http://localhost:5000"
    mlflow_token: str | None = field(default=None, repr=False)
    mlflow_username: str | None = None
    mlflow_password: str | None = field(default=None, repr=False)
    mlflow_insecure_tls: bool = False
    mlflow_timeout_seconds: float = 10.0
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
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
    flower_password: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    # A message redelivered this often because its worker died is dead-lettered (poison).
    max_deliveries: int = 5
    redrive_enabled: bool = True
    redrive_interval_seconds: float = 60.0
    redrive_batch: int = 50
    sweep_interval_seconds: float = 300.0
    # Decisions for one model are serialised by a lock that expires by itself, so that a worker
    # killed while holding it blocks that model for this long at most. Longer than a reconcile.
    model_lock_seconds: float = 60.0
    # A worker whose heartbeat (in Redis) is this old is dead: the live workers put the messages
    # it held back in the queue and free its model locks. 0 turns that off (the Redis
    # visibility timeout, an hour, and the sweep are then what rescue its events).
    worker_dead_after_seconds: float = 30.0
    # The gate's ledger (decisions, approvals): SQLite in the data folder of `mlflow-gate up`,
    # relative to the working directory; PostgreSQL in production. Kept out of repr: it may
    # hold a password.
    database_url: str = field(default="sqlite:///.mlflow-gate/ledger.db", repr=False)
    # The Databricks workspace registry (GATE_DATABRICKS_*); None when not configured.
    databricks: DatabricksSettings | None = None
    # Behind a single-sign-on proxy: the header naming the signed-in user, believed only from
    # these peer addresses (IPs or CIDR networks).
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    # Where `mlflow-gate request` and `mlflow-gate review` reach the gate's HTTP API.
    gate_url: str = "http://localhost:8080"
    # The gate's console (its base URL): notifications link to it when set.
    console_url: str | None = None
    # The console's session cookies are signed with this (required to serve it); who may replay
    # and purge dead letters besides MLflow admins: members of this MLflow role.
    console_secret: str | None = field(default=None, repr=False)
    console_admin_role: str | None = None

    def require_console_secret(self) -> str:
        """The console's signing key; refuse to serve without a strong one."""
        secret = self.console_secret
        if not secret:
            raise ConfigError(
                "GATE_CONSOLE_SECRET is not set: the console signs its sessions with it; set "
                "it to a random value of 32 characters or more (e.g. `python -c 'import "
                "secrets; print(secrets.token_urlsafe(32))'`), the same in every console "
                "process"
            )
        if len(secret) < 32:
            raise ConfigError(
                f"GATE_CONSOLE_SECRET is {len(secret)} characters long: use 32 or more random "
                "characters (a short key lets sessions be forged)"
            )
        return secret

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        read = _Reader(env, {f.name: f.default for f in fields(cls)})
        settings = cls(
            mlflow_token=read.optional("MLFLOW_TRACKING_TOKEN"),
            mlflow_username=read.optional("MLFLOW_TRACKING_USERNAME"),
            mlflow_password=read.optional("MLFLOW_TRACKING_PASSWORD"),
            mlflow_insecure_tls=read.boolean("MLFLOW_TRACKING_INSECURE_TLS", "mlflow_insecure_tls"),
            mlflow_timeout_seconds=read.number(
                "GATE_MLFLOW_TIMEOUT_SECONDS", "mlflow_timeout_seconds", minimum=0.1
            ),
            redis_url=read.text("GATE_REDIS_URL", "redis_url"),
            webhook_secret=read.optional("GATE_WEBHOOK_SECRET"),
            allow_unsigned=read.boolean("GATE_ALLOW_UNSIGNED", "allow_unsigned"),
            policy_file=Path(p) if (p := read.optional("GATE_POLICY_FILE")) else None,
            retry_max_attempts=read.whole("GATE_RETRY_MAX_ATTEMPTS", "retry_max_attempts", 1),
            retry_backoff_seconds=read.number(
                "GATE_RETRY_BACKOFF_SECONDS", "retry_backoff_seconds", minimum=0
            ),
            retry_backoff_max_seconds=read.number(
                "GATE_RETRY_BACKOFF_MAX_SECONDS", "retry_backoff_max_seconds", minimum=0
            ),
            dedupe_ttl_seconds=read.whole("GATE_DEDUPE_TTL_SECONDS", "dedupe_ttl_seconds", 1),
            log_level=read.text("GATE_LOG_LEVEL", "log_level").upper(),
            log_format=read.text("GATE_LOG_FORMAT", "log_format").lower(),
            worker_metrics_port=read.whole("GATE_WORKER_METRICS_PORT", "worker_metrics_port", 0),
            flower_user=read.optional("GATE_FLOWER_USER"),
            flower_password=read.optional("GATE_FLOWER_PASSWORD"),
            admin_token=read.optional("GATE_ADMIN_TOKEN"),
            max_deliveries=read.whole("GATE_MAX_DELIVERIES", "max_deliveries", 1),
            redrive_enabled=read.boolean("GATE_REDRIVE_ENABLED", "redrive_enabled"),
            redrive_interval_seconds=read.number(
                "GATE_REDRIVE_INTERVAL_SECONDS", "redrive_interval_seconds", minimum=0.1
            ),
            redrive_batch=read.whole("GATE_REDRIVE_BATCH", "redrive_batch", 1),
            sweep_interval_seconds=read.number(
                "GATE_SWEEP_INTERVAL_SECONDS", "sweep_interval_seconds", minimum=0.1
            ),
            model_lock_seconds=read.number(
                "GATE_MODEL_LOCK_SECONDS", "model_lock_seconds", minimum=1
            ),
            worker_dead_after_seconds=read.number(
                "GATE_WORKER_DEAD_AFTER_SECONDS", "worker_dead_after_seconds", minimum=0
            ),
            databricks=_workspace(read),
            database_url=read.text("GATE_DATABASE_URL", "database_url").strip(),
            trusted_user_header=(read.optional("GATE_TRUSTED_USER_HEADER") or "").strip() or None,
            trusted_proxies=_networks(read.optional("GATE_TRUSTED_PROXIES")),
            gate_url=read.text("GATE_URL", "gate_url").strip().rstrip("/"),
            console_url=(read.optional("GATE_CONSOLE_URL") or "").strip().rstrip("/") or None,
            console_secret=read.optional("GATE_CONSOLE_SECRET"),
            console_admin_role=(read.optional("GATE_CONSOLE_ADMIN_ROLE") or "").strip() or None,
        ).with_tracking_uri(read.text("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"))
        _check(settings)
        return settings

    def with_tracking_uri(self, uri: str) -> Settings:
        """These settings for the tracking server at `uri`, whose credentials (`user:password@`)
        are taken out of the URL, so that it can be shown and logged as it is, into
        mlflow_username and mlflow_password; MLFLOW_TRACKING_USERNAME and _PASSWORD, when both
        are set, come first (as they did when the URL was sent with its credentials)."""
        clean, user, password = split_credentials(uri.strip())
        clean = clean.rstrip("/")
        if user is None and password is None:
            return replace(self, mlflow_tracking_uri=clean)
        if not user or not password:
            raise ConfigError(
                f"MLFLOW_TRACKING_URI={redacted(uri)!r} holds a user name without a password (or "
                "a password without a user name); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead, and the URL without "
                "them"
            )
        if self.mlflow_username and self.mlflow_password:
            return replace(self, mlflow_tracking_uri=clean)
        return replace(
            self, mlflow_tracking_uri=clean, mlflow_username=user, mlflow_password=password
        )

    def require_webhook_secret(self) -> None:
        """The receiver refuses to start without a secret, unless unsigned mode is asked for.

        A receiver for the workspace registry only (its webhook secret or authorization set)
        starts without GATE_WEBHOOK_SECRET; its MLflow route then refuses every webhook (401).
        """
        workspace = self.databricks is not None and self.databricks.verifies_webhooks
        if not self.webhook_secret and not self.allow_unsigned and not workspace:
            raise ConfigError(
                "GATE_WEBHOOK_SECRET is not set: the receiver cannot verify that webhooks come "
                "from MLflow. Set it to the secret the webhook was registered with "
                "(GATE_ALLOW_UNSIGNED=true skips verification, for development only)."
            )

    def retry_delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (1-based), without jitter."""
        delay = self.retry_backoff_seconds * (2 ** min(max(attempt - 1, 0), 62))
        return float(min(delay, self.retry_backoff_max_seconds))


def _workspace(read: _Reader) -> DatabricksSettings | None:
    host = (read.optional("GATE_DATABRICKS_HOST") or "").strip().rstrip("/") or None
    section = DatabricksSettings(
        host=host,
        token=read.optional("GATE_DATABRICKS_TOKEN"),
        webhook_secret=read.optional("GATE_DATABRICKS_WEBHOOK_SECRET"),
        webhook_authorization=read.optional("GATE_DATABRICKS_WEBHOOK_AUTHORIZATION"),
    )
    if section == DatabricksSettings():
        return None
    if host is not None and not host.startswith(("http://", "https://")):
        raise ConfigError(
            f"GATE_DATABRICKS_HOST={redacted(host)!r} is not an http(s) URL; give the workspace "
            "URL, e.g. https://adb-1234567890123456.7.azuredatabricks.net"
        )
    if host is not None and not section.token:
        raise ConfigError(
            "GATE_DATABRICKS_HOST is set but GATE_DATABRICKS_TOKEN is not: the gate needs a "
            "token allowed to approve transition requests (a service principal's, ideally)"
        )
    return section


def _networks(raw: str | None) -> tuple[str, ...]:
    """GATE_TRUSTED_PROXIES: comma-separated IP addresses or CIDR networks."""
    found: list[str] = []
    for part in (raw or "").split(","):
        text = part.strip()
        if not text:
            continue
        try:
            found.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ConfigError(
                f"GATE_TRUSTED_PROXIES: {text!r} is not an IP address or network; write e.g. "
                "GATE_TRUSTED_PROXIES=10.0.0.5,10.1.0.0/16"
            ) from None
    return tuple(found)


def _check(settings: Settings) -> None:
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={redacted(settings.mlflow_tracking_uri)!r} is not an http(s) "
            "URL; point it at the MLflow tracking server, e.g. http://localhost:5000"
        )
    if settings.retry_backoff_max_seconds < settings.retry_backoff_seconds:
        raise ConfigError(
            f"GATE_RETRY_BACKOFF_MAX_SECONDS={settings.retry_backoff_max_seconds:g} is below "
            f"GATE_RETRY_BACKOFF_SECONDS={settings.retry_backoff_seconds:g}; raise the maximum"
        )
    if settings.log_format not in {"auto", "json", "text"}:
        raise ConfigError(f"GATE_LOG_FORMAT={settings.log_format!r} is not one of auto, json, text")
    if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(
            f"GATE_LOG_LEVEL={settings.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR"
        )
    if 0 < settings.worker_dead_after_seconds < 3:
        raise ConfigError(
            f"GATE_WORKER_DEAD_AFTER_SECONDS={settings.worker_dead_after_seconds:g} is too short "
            "for a heartbeat to arrive in time (live workers would look dead); use 3 or more, "
            "or 0 to turn the recovery of dead workers' events off"
        )
    database_url.parse(settings.database_url, "GATE_DATABASE_URL")
    if settings.trusted_user_header and not settings.trusted_proxies:
        raise ConfigError(
            f"GATE_TRUSTED_USER_HEADER={settings.trusted_user_header} is set but "
            "GATE_TRUSTED_PROXIES is not: the header would be believed from nobody; list the "
            "proxy's addresses (anyone else could send the header)"
        )
    if not settings.gate_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"GATE_URL={redacted(settings.gate_url)!r} is not an http(s) URL; point it at the "
            "gate's receiver, e.g. http://localhost:8080"
        )
    if settings.console_url and not settings.console_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"GATE_CONSOLE_URL={redacted(settings.console_url)!r} is not an http(s) URL; give the "
            "console's base URL, e.g. https://gate.example.com"
        )


class _Reader:
    """Reads one variable each call; an unset or empty variable gives the field's default."""

    def __init__(self, env: Mapping[str, str], defaults: Mapping[str, Any]) -> None:
        self.env = env
        self.defaults = defaults

    def optional(self, name: str) -> str | None:
        return self.env.get(name) or None

    def text(self, name: str, field: str) -> str:
        return self.env.get(name) or str(self.defaults[field])

    def boolean(self, name: str, field: str) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return bool(self.defaults[field])
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")

    def whole(self, name: str, field: str, minimum: int) -> int:
        return int(self._parse(name, field, minimum, whole=True))

    def number(self, name: str, field: str, *, minimum: float) -> float:
        return float(self._parse(name, field, minimum, whole=False))

    def _parse(self, name: str, field: str, minimum: float, *, whole: bool) -> float:
        default = self.defaults[field]
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return float(default)
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
