"""An agent's credentials: registered once with an operator's token, then loaded from a file.

The file holds the agent id, its API key and its signing secret (shown only at registration), so it
is written with mode 0600, atomically (a crash never leaves half a file).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests


@dataclass(frozen=True)
class Credentials:
    agent_id: str
    api_key: str
    signing_secret: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["agent_id"], data["api_key"], data.get("signing_secret"))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp's file is 0600 already
                json.dump(asdict(self), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def register(server: str, operator_token: str, *, name: str, capabilities: list[str],
             agent_id: str | None = None, role: str | None = None, timeout: float = 10.0,
             **extra: Any) -> Credentials:
    """Register an agent through `POST /api/agents` with an operator's token; raises
    `requests.HTTPError` when the server refuses (the agent id taken, a bad token...)."""
    body = {"name": name, "capabilities": capabilities, "id": agent_id, "role": role, **extra}
    resp = requests.post(f"{server.rstrip('/')}/api/agents", json={k: v for k, v in body.items() if v is not None},
                         headers={"Authorization": f"Bearer {operator_token}"}, timeout=timeout)
    resp.raise_for_status()
    data = resp.json()
    return Credentials(data["id"], data["api_key"], data.get("signing_secret"))


def load_or_register(path: str | Path, server: str, operator_token: str | None, *, name: str,
                     capabilities: list[str], agent_id: str | None = None, **extra: Any) -> Credentials:
    """The credentials in `path`; when there is no such file, register the agent and write them there."""
    path = Path(path)
    if path.exists():
        return Credentials.load(path)
    if not operator_token:
        raise FileNotFoundError(f"{path} does not exist and no operator token was given to register the agent")
    creds = register(server, operator_token, name=name, capabilities=capabilities, agent_id=agent_id, **extra)
    creds.save(path)
    return creds
