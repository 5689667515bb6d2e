"""The gate's exceptions, split by what to do about them.

    GateError
    ├── ConfigError            bad settings or policy file: stop the process at start
    ├── EventError             a webhook that cannot be understood: answer 400, never retry
    ├── SignatureError         a webhook that is not from MLflow: answer 401
    ├── TransientError         worth retrying (with backoff), then dead-letter
    │   └── MlflowUnavailable  connection error, timeout, 5xx or 429 from MLflow
    └── PermanentError         retrying will not help: dead-letter at once
        └── MlflowRequestError MLflow refused the call (4xx other than 429)
            ├── MlflowNotFound the model, version, run or alias does not exist
            └── MlflowForbidden the gate's credentials (401) or permissions (403) are at fault

Every message says what went wrong and what to do about it.
"""

from __future__ import annotations


class GateError(Exception):
    """Base of every error the gate raises on purpose."""


class ConfigError(GateError):
    """A setting or the policy file is wrong; the process must not start."""


class EventError(GateError):
    """A webhook payload is malformed or lacks a field the gate needs."""


class SignatureError(GateError):
    """A webhook's signature, delivery id or timestamp does not check out."""


class TransientError(GateError):
    """A failure that may go away by itself: retry with backoff."""


class PermanentError(GateError):
    """A failure that retrying cannot fix: dead-letter the event at once."""


class MlflowUnavailable(TransientError):
    """MLflow did not answer, timed out, or answered 5xx or 429."""


class MlflowRequestError(PermanentError):
    """MLflow refused a call with a 4xx answer (other than 429)."""

    def __init__(self, message: str, status: int, error_code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class MlflowNotFound(MlflowRequestError):
    """The model, version, run or alias asked for does not exist."""


class MlflowForbidden(MlflowRequestError):
    """MLflow refused the gate's credentials (401) or its account's permissions (403).

    A problem of the gate's configuration, never a fact about a version: an event that meets it
    is dead-lettered (not decided), to be replayed once the credentials or permissions are fixed.
    """
