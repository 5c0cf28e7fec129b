"""`larry prospect`: the guide's prospecting scenario, driven through the API with an operator's token.

For each prospect of the CSV: a plan of three phases (discovery, proposal, follow-up) decomposed on
the server with the prospecting templates, an execution of it, queued. Then N Larry processes work
them until every execution has ended; this process only watches (a line per finished subtask), cancels
blocked executions when asked to, writes the final statuses to the CSV, and prints a summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from orchestrator_sdk.credentials import Credentials, load_or_register

from larry import prospects
from larry.actions import ACTIONS

FINISHED = ("COMPLETED", "FAILED", "CANCELLED")
FINAL_STATUS = {"FAILED": "failed", "CANCELLED": "cancelled"}
# (key, phase title, task title, description): the task titles pick the prospecting templates.
PHASES = (("discovery", "Discovery", "Prospect discovery with {name}", "Contact email, discovery call, interview "
           "notes and requirements document."),
          ("proposal", "Proposal", "Prospect proposal for {name}", "Analyse the feedback, write the proposal, "
           "schedule a demo."),
          ("followup", "Follow-up", "Prospect follow-up with {name}", "Send the proposal, follow-up call, update the "
           "CSV status."))


class ScenarioError(Exception):
    """The server refused a step of the set-up (a message for the operator)."""


@dataclass
class Operator:
    """The operator's side of the API."""

    server: str
    token: str
    http: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.http.request(method, f"{self.server.rstrip('/')}{path}", json=body, timeout=60,
                                 headers={"Authorization": f"Bearer {self.token}"})
        if resp.status_code >= 400:
            try:
                err = resp.json().get("error", {})
            except ValueError:
                err = {"message": resp.text[:200]}
            raise ScenarioError(f"{method} {path}: {resp.status_code} {err.get('code', '')} {err.get('message', '')}")
        return resp.json() if resp.content else {}


def plan_body(p: prospects.Prospect, csv_path: Path, goal: str) -> dict[str, Any]:
    """One plan per prospect: three phase tasks, each waiting on the one before."""
    tasks = []
    for i, (key, phase, title, description) in enumerate(PHASES):
        tasks.append({"id": f"phase_{i + 1}_{key}", "title": title.format(name=p.name), "description": description,
                      "assignee_role": "sales", "phase_id": f"phase_{i + 1}", "phase_title": phase,
                      "prerequisite_task_ids": [f"phase_{i}_{PHASES[i - 1][0]}"] if i else []})
    context = {"goal": goal, "contact_name": p.name, "contact_email": p.email, "contact_phone": p.phone or "unknown",
               "organisation": p.business or p.name, "csv_path": str(csv_path.resolve()), "notes": p.notes}
    return {"title": f"Prospecting {p.business or p.name}", "goal": goal, "context": context, "tasks": tasks}


def create_executions(op: Operator, rows: list[prospects.Prospect], csv_path: Path, agent_id: str,
                      goal: str) -> dict[str, prospects.Prospect]:
    """Plans decomposed on the server, executions created and queued: {execution id: prospect}."""
    out = {}
    for p in rows:
        plan = op.call("POST", "/api/plans", plan_body(p, csv_path, goal))
        report = op.call("POST", f"/api/plans/{plan['id']}/decomposition", {"all": True, "agent_id": agent_id})
        if report["counts"]["applied"] != len(PHASES):
            raise ScenarioError(f"plan {plan['id']}: the templates decomposed {report['counts']['applied']} of "
                                f"{len(PHASES)} phases: {report.get('proposals') or report.get('skipped')}")
        ex = op.call("POST", "/api/executions", {"plan_id": plan["id"]})
        op.call("PATCH", f"/api/executions/{ex['execution_id']}", {"status": "QUEUED"})
        out[ex["execution_id"]] = p
    return out


def register_agents(op: Operator, workspace: Path, n: int) -> list[Path]:
    """N Larry agents, registered once and then loaded from `workspace/agents/`."""
    paths = []
    for i in range(1, n + 1):
        path = workspace / "agents" / f"larry_{i}.json"
        load_or_register(path, op.server, op.token, name=f"Larry {i}", capabilities=list(ACTIONS), role="sales")
        paths.append(path)
    return paths


def start_larrys(server: str, credential_files: list[Path], workspace: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "LARRY_WORKSPACE": str(workspace)}
    return [subprocess.Popen([sys.executable, "-m", "larry.cli", "run", "--server", server, "--credentials",
                              str(path), "--log-file", str(workspace / "logs" / f"{path.stem}.log")], env=env)
            for path in credential_files]


def stop_larrys(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Watch:
    """What has been printed already, so that each subtask and each block is told once."""

    done: set[tuple[str, str]] = field(default_factory=set)
    blocked: set[tuple[str, str]] = field(default_factory=set)


def _report(op: Operator, watch: Watch, ex: dict[str, Any], who: str, on_block: str,
            say: Callable[[str], None]) -> None:
    eid = ex["execution_id"]
    for task in ex["tasks"]:
        for sub in task["subtasks"]:
            key = (eid, sub["subtask_id"])
            if sub["status"] in ("COMPLETE", "SKIPPED") and key not in watch.done:
                watch.done.add(key)
                say(f"[{who}] {sub['status'].lower():8} {sub['subtask_id']}: {sub['title']} ({sub['action']}, "
                    f"{sub.get('agent_id') or 'no agent'})")
        if task["status"] == "BLOCKED" and (eid, task["task_id"]) not in watch.blocked:
            watch.blocked.add((eid, task["task_id"]))
            if on_block == "cancel":
                say(f"[{who}] blocked on {task['task_id']}: {task.get('error_message')}; cancelling")
                op.call("POST", f"/api/executions/{eid}/tasks/{task['task_id']}/resolve",
                        {"option": "cancel_execution"})
            else:
                say(f"[{who}] BLOCKED on {task['task_id']}: {task.get('error_message')}\n"
                    f"    options: {', '.join(task.get('next_step_options') or [])}\n"
                    f"    resolve: {op.server.rstrip('/')}/executions/{eid} "
                    f"(POST /api/executions/{eid}/tasks/{task['task_id']}/resolve)")
        elif task["status"] != "BLOCKED":
            watch.blocked.discard((eid, task["task_id"]))


def watch_until_ended(op: Operator, executions: dict[str, prospects.Prospect], on_block: str,
                      say: Callable[[str], None], *, interval: float = 0.5,
                      alive: Callable[[], bool] = lambda: True) -> dict[str, str]:
    """Poll the executions until every one has ended; return {execution id: final status}."""
    watch, final = Watch(), {}
    while len(final) < len(executions):
        for eid, p in executions.items():
            if eid in final:
                continue
            ex = op.call("GET", f"/api/executions/{eid}")
            _report(op, watch, ex, p.name, on_block, say)
            if ex["status"] in FINISHED:
                final[eid] = ex["status"]
                say(f"[{p.name}] execution {eid} {ex['status']}")
        if len(final) < len(executions):
            if not alive():
                raise ScenarioError("every Larry process has exited; executions are still open")
            time.sleep(interval)
    return final


def run_scenario(server: str, token: str, csv_path: Path, *, workers: int = 1, workspace: Path | None = None,
                 on_block: str = "wait", goal: str = "Offer a custom business management system",
                 say: Callable[[str], None] = print) -> int:
    """The whole scenario; the exit code: 0 when every execution completed, 1 otherwise."""
    rows = prospects.load_prospects(csv_path)
    workspace = (workspace or csv_path.resolve().parent / "larry-workspace").resolve()
    op = Operator(server, token)
    credential_files = register_agents(op, workspace, workers)
    first_agent = Credentials.load(credential_files[0]).agent_id
    executions = create_executions(op, rows, csv_path, first_agent, goal)
    say(f"{len(executions)} executions queued for {len(rows)} prospects; {workers} Larry process(es) working")
    procs = start_larrys(server, credential_files, workspace)
    try:
        final = watch_until_ended(op, executions, on_block, say,
                                  alive=lambda: any(p.poll() is None for p in procs))
    finally:
        stop_larrys(procs)
    for eid, status in final.items():
        if status in FINAL_STATUS:
            prospects.update_status(csv_path, executions[eid].email, FINAL_STATUS[status], f"execution {eid}")
    counts = {s: sum(1 for v in final.values() if v == s) for s in FINISHED}
    say("summary: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + f" of {len(final)}; "
        f"workspace {workspace}")
    return 0 if counts["COMPLETED"] == len(final) else 1
