"""Why a delivery failed, split by what to do.

The classes sit in shared.errors' tree:

    TransientError
    └── SinkUnavailable    connection error, timeout, 5xx or 429: retry with backoff
    PermanentError
    ├── SinkRefused        the sink answered another 4xx (or a redirect): dead-letter at once
    └── SinkNotConfigured  the sink is no longer in the policies, or its variable is unset or bad
"""

from __future__ import annotations

from shared.errors import PermanentError, TransientError


class SinkUnavailable(TransientError):
    """The sink did not answer, timed out, or answered 5xx or 429."""


class SinkRefused(PermanentError):
    """The sink answered a 4xx other than 429 (or a redirect): retrying will not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SinkNotConfigured(PermanentError):
    """The delivery's sink is not configured on this worker (policies or environment)."""
