"""The tag contract between ML engineers, the gate and MLflow."""

from __future__ import annotations

# Set by an engineer on a model version: the alias or stage it should be promoted to.
REQUEST = "governance.request"
# Optionally set with it: who asks for the promotion, for four_eyes rules (open-source MLflow
# records no user on tags; a registry's own transition requests carry their own).
REQUESTED_BY = "governance.requested_by"
# The run tag MLflow's client sets to the user who ran it: the version's creator when the
# registry recorded no user_id on the version.
RUN_USER = "mlflow.user"

# Written by the gate on the model version when it decides.
STATUS = "governance.status"  # approved | rejected
TARGET = "governance.target"
REASON = "governance.reason"
POLICY = "governance.policy"
DECIDED_AT = "governance.decided_at"
CHECKS = "governance.checks"

APPROVED = "approved"
REJECTED = "rejected"

# Written by the gate on the registered model: the last version it approved for a target.
# It is what a protected alias is put back on when someone moves it outside the gate.
_APPROVED_PREFIX = "governance.approved."


def approved_pointer(target: str) -> str:
    return f"{_APPROVED_PREFIX}{target}"
