"""Prometheus counters of the Databricks flow (decisions themselves are counted by outcome where
they are recorded, in worker/decisions.py)."""

from __future__ import annotations

from prometheus_client import Counter

VIOLATIONS = Counter(
    "gate_databricks_violations_total",
    "Versions found moved to a governed Databricks stage without the gate's approval, by stage "
    "and what was done (reported or reverted)",
    ["stage", "action"],
)
