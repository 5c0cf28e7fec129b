"""The agent registry: registration (the API key is shown once), capabilities, listing."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.credentials import Principal, issue_credential
from orchestrator.db import flush_new
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.ids import ID_RULE, is_valid_id
from orchestrator.models import Agent, ExecutionSubtask
from orchestrator.publish import iso


def normalise_capabilities(raw: list[Any] | None) -> list[dict[str, Any]]:
    """Strings or {"action", "params"} objects → [{"action": ..., "params": [...]}], first of each action."""
    out: dict[str, dict[str, Any]] = {}
    for item in raw or []:
        cap = {"action": item, "params": []} if isinstance(item, str) else {
            "action": item["action"], "params": list(item.get("params") or [])}
        out.setdefault(cap["action"], cap)
    return list(out.values())


def capability_actions(agent: Agent) -> set[str]:
    return {c["action"] for c in agent.capabilities or [] if isinstance(c, dict) and "action" in c}


def register_agent(session: Session, owner_id: str, data: dict[str, Any], now: datetime) -> tuple[Agent, str]:
    agent_id = data.get("id") or "agent_{}_{}".format(
        re.sub(r"[^a-z0-9]+", "_", data["name"].lower()).strip("_")[:40] or "agent", secrets.token_hex(3))
    if not is_valid_id(agent_id):
        raise ValidationFailed(f"An agent id may use only {ID_RULE}.", agent_id=agent_id)
    conflict = Conflict(f"Agent {agent_id} already exists.", agent_id=agent_id)
    if session.get(Agent, agent_id) is not None:
        raise conflict
    agent = Agent(
        id=agent_id, name=data["name"], role=data.get("role"), owner_id=owner_id,
        webhook_url=data.get("webhook_url"), poll_endpoint=data.get("poll_endpoint") or f"/api/agents/{agent_id}/work",
        capabilities=normalise_capabilities(data.get("capabilities")), created_at=now,
    )
    session.add(agent)
    flush_new(session, conflict)
    _, key = issue_credential(session, agent_id=agent.id, label="registration")
    return agent, key


def get_agent(session: Session, principal: Principal, agent_id: str) -> Agent:
    agent = session.get(Agent, agent_id)
    if agent is None or not (principal.is_admin or agent.owner_id == principal.id):
        raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    return agent


def list_agents(session: Session, principal: Principal) -> list[Agent]:
    q = select(Agent).order_by(Agent.created_at, Agent.id)
    if not principal.is_admin:
        q = q.where(Agent.owner_id == principal.id)
    return list(session.scalars(q))


def holdings(session: Session, agent_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """What each agent holds now: its RUNNING subtasks."""
    out: dict[str, list[dict[str, str]]] = {a: [] for a in agent_ids}
    if agent_ids:
        for row in session.execute(
            select(ExecutionSubtask.agent_id, ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id)
            .where(ExecutionSubtask.agent_id.in_(agent_ids), ExecutionSubtask.status == "RUNNING")
        ):
            out[row.agent_id].append({"execution_id": row.execution_id, "subtask_id": row.plan_subtask_id})
    return out


def agent_to_dict(agent: Agent, holding: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "id": agent.id, "name": agent.name, "role": agent.role, "capabilities": agent.capabilities or [],
        "webhook_url": agent.webhook_url, "poll_endpoint": agent.poll_endpoint, "is_active": agent.is_active,
        "last_heartbeat": iso(agent.last_heartbeat), "created_at": iso(agent.created_at),
        **({"holding": holding} if holding is not None else {}),
    }


def agents_with_holdings(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The agents `principal` may see, as the API and the dashboard show them: each with what it holds."""
    agents = list_agents(session, principal)
    held = holdings(session, [a.id for a in agents])
    return [agent_to_dict(a, held[a.id]) for a in agents]
