"""Rollout of a model version across Triton replicas (see `export.rollout.api`)."""

from export.rollout.api import (
    ReplicaResult,
    RolloutReport,
    previous_version,
    rollback,
    rollout,
)

__all__ = ["ReplicaResult", "RolloutReport", "previous_version", "rollback", "rollout"]
