"""Typed SQLAlchemy 2 models, split by aggregate."""

from orchestrator.models.agents import Agent
from orchestrator.models.base import Base, UTCDateTime, utcnow
from orchestrator.models.encryption_check import EncryptionCheck
from orchestrator.models.events import ExecutionEvent
from orchestrator.models.executions import Execution, ExecutionSubtask, ExecutionTask
from orchestrator.models.plans import Plan, PlanSubtask, PlanTask
from orchestrator.models.shards import ShardFence
from orchestrator.models.users import ApiCredential, User

__all__ = [
    "Agent",
    "ApiCredential",
    "Base",
    "EncryptionCheck",
    "Execution",
    "ExecutionEvent",
    "ExecutionSubtask",
    "ExecutionTask",
    "Plan",
    "PlanSubtask",
    "PlanTask",
    "ShardFence",
    "UTCDateTime",
    "User",
    "utcnow",
]
