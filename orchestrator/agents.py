"""The agent registry: registration (the API key and signing secret are shown once), capabilities,
listing, request signing settings."""

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
from orchestrator.signing import SIGNING_MODES, new_signing_secret


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


def register_agent(session: Session, owner_id: str, data: dict[str, Any], now: datetime) -> tuple[Agent, str, str]:
    """A new agent with its API key and its signing secret, both returned here and never again."""
    agent_id = data.get("id") or "agent_{}_{}".format(
        re.sub(r"[^a-z0-9]+", "_", data["name"].lower()).strip("_")[:40] or "agent", secrets.token_hex(3))
    if not is_valid_id(agent_id):
        raise ValidationFailed(f"An agent id may use only {ID_RULE}.", agent_id=agent_id)
    conflict = Conflict(f"Agent {agent_id} already exists.", agent_id=agent_id)
    if session.get(Agent, agent_id) is not None:
        raise conflict
    secret = new_signing_secret()
    agent = Agent(
        id=agent_id, name=data["name"], role=data.get("role"), owner_id=owner_id,
        webhook_url=data.get("webhook_url"), poll_endpoint=data.get("poll_endpoint") or f"/api/agents/{agent_id}/work",
        capabilities=normalise_capabilities(data.get("capabilities")), created_at=now,
        signing=_signing_mode(data.get("signing") or "required"), signing_secret=secret,
        rate_limit_per_minute=data.get("rate_limit_per_minute"),
    )
    session.add(agent)
    flush_new(session, conflict)
    _, key = issue_credential(session, agent_id=agent.id, label="registration")
    return agent, key, secret


def get_agent(session: Session, principal: Principal, agent_id: str) -> Agent:
    agent = session.get(Agent, agent_id)
    if agent is None or not (principal.is_admin or agent.owner_id == principal.id):
        raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    return agent


def _signing_mode(mode: str) -> str:
    if mode not in SIGNING_MODES:
        raise ValidationFailed(f"signing is one of {', '.join(SIGNING_MODES)}.", field="signing")
    return mode


def set_signing(session: Session, principal: Principal, agent_id: str, mode: str) -> Agent:
    """Make `agent_id`'s requests need a signature ("required") or only check one it sends ("optional").
    The caller announces the change (orchestrator/revocation.py): web processes cache the mode."""
    agent = get_agent(session, principal, agent_id)
    if _signing_mode(mode) == "required" and agent.signing_secret is None:
        raise ValidationFailed(f"Agent {agent_id} has no signing secret yet: issue one first "
                               f"(POST /api/agents/{agent_id}/signing-secret).", agent_id=agent_id)
    agent.signing = mode
    return agent


def update_agent(session: Session, principal: Principal, agent_id: str, changes: dict[str, Any]) -> Agent:
    """An operator's changes to `agent_id`: its signing mode, its own rate limit (None: the default).
    The caller announces them (orchestrator/revocation.py): web processes cache both with the principal."""
    agent = get_agent(session, principal, agent_id)
    if "signing" in changes:
        set_signing(session, principal, agent_id, changes["signing"])
    if "rate_limit_per_minute" in changes:
        agent.rate_limit_per_minute = changes["rate_limit_per_minute"]
    return agent


def rotate_signing_secret(session: Session, principal: Principal, agent_id: str) -> tuple[Agent, str]:
    """A new signing secret for `agent_id`, returned here and never again; the old one stops working
    once the caller has announced the change."""
    agent = get_agent(session, principal, agent_id)
    agent.signing_secret = secret = new_signing_secret()
    return agent, secret


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
        "signing": agent.signing, "rate_limit_per_minute": agent.rate_limit_per_minute,
        **({"holding": holding} if holding is not None else {}),
    }


def agents_with_holdings(session: Session, principal: Principal) -> list[dict[str, Any]]:
    """The agents `principal` may see, as the API and the dashboard show them: each with what it holds."""
    agents = list_agents(session, principal)
    held = holdings(session, [a.id for a in agents])
    return [agent_to_dict(a, held[a.id]) for a in agents]
