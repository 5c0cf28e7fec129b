"""`orchestrator plans ...`: import, export and decompose plans from the command line.

Errors are one line on stderr and a non-zero exit (never a traceback); nothing is written on error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy import select

from cli.errors import one_line_errors
from orchestrator.credentials import Principal
from orchestrator.db import Database
from orchestrator.decomposition.service import (
    ApplyTo,
    PlanDecomposition,
    agent_access,
    decompose_plan,
    decompose_task,
    task_request,
)
from orchestrator.models import User, utcnow
from orchestrator.plan_files import dump_plan
from orchestrator.plan_import import plan_data_from_files
from orchestrator.planexe import read_folder
from orchestrator.plans import create_plan, get_plan, plan_to_dict
from orchestrator.settings import Settings


@click.group()
def plans() -> None:
    """Plans: import (PlanExe runs: a folder, a zip or one WBS file; plan files), export, decompose."""


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    try:
        db = Database(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield db
    finally:
        db.dispose()


def _principal(db: Database, username: str | None, settings: Settings) -> Principal:
    """The user the command acts for: --owner, else the configured admin user."""
    name = username or settings.admin_user
    with db.reading() as s:
        user = s.scalar(select(User).where(User.username == name))
        if user is None:
            raise click.ClickException(f"No user named {name!r}; pass --owner with an existing user name.")
        return Principal("user", user.id, user.is_admin)


def _read_input(path: Path) -> tuple[dict[str, str | bytes], str | None]:
    """A folder's PlanExe files, or one file (a plan file, a PlanExe WBS file or a zip of a run) as bytes."""
    if not path.exists():
        raise click.ClickException(f"{path} does not exist.")
    if path.is_dir():
        files = read_folder(path)
        if not files:
            raise click.ClickException(f"{path} holds no PlanExe files (wbs_level2.json, ...).")
        return dict(files), "planexe"
    try:
        return {path.name: path.read_bytes()}, None
    except OSError as exc:
        raise click.ClickException(f"Cannot read {path}: {exc.strerror or exc}") from exc


@plans.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--owner", help="user name of the plan's owner (default: ORCHESTRATOR_ADMIN_USER)")
@one_line_errors("plan")
def import_cmd(path: Path, owner: str | None) -> None:
    """Import PATH: a PlanExe run folder, a zip of one, a single PlanExe WBS file, or a plan file (YAML/JSON)."""
    files, fmt = _read_input(path)
    imported = plan_data_from_files(files, fmt)
    settings = _settings()
    with _database(settings) as db:
        principal = _principal(db, owner, settings)
        with db.unit_of_work() as s:
            plan_id = create_plan(s, principal.id, imported.data, utcnow(), source=imported.source).id
    for w in imported.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"read: {', '.join(imported.files)}")
    n = imported.counts()
    click.echo(f"imported {plan_id} ({n['tasks']} tasks, {n['subtasks']} subtasks, {n['dependencies']} dependencies)")
    if n["undecomposed_subtasks"]:
        click.echo(f"{n['undecomposed_subtasks']} subtasks are manual placeholders (decomposed: false); to make them "
                   f"executable: orchestrator plans decompose {plan_id} --all --agent AGENT_ID")


@plans.command("export")
@click.argument("plan_id")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@one_line_errors("plan")
def export_cmd(plan_id: str, fmt: str) -> None:
    """Write plan PLAN_ID to stdout in the plan file format."""
    with _database(_settings()) as db, db.reading() as s:
        text = dump_plan(plan_to_dict(get_plan(s, Principal("user", "cli", is_admin=True), plan_id)), fmt)
    click.echo(text, nl=False)


def _print_plan_decomposition(report: PlanDecomposition) -> None:
    click.echo(json.dumps(report.to_response(), indent=2, ensure_ascii=False))
    click.echo(f"applied {len(report.applied)}, left {len(report.proposals)} as proposals (confidence below "
               f"{report.apply_threshold}), skipped {len(report.skipped)}", err=True)


@plans.command("decompose")
@click.argument("plan_id")
@click.argument("task_id", required=False)
@click.option("--all", "all_", is_flag=True,
              help="every task without subtasks and every placeholder subtask; applies the confident ones")
@click.option("--agent", "agent_id", required=True, help="the agent whose capabilities bound the actions")
@click.option("--apply", "apply_", is_flag=True, help="store it when confidence reaches the threshold")
@click.option("--replace", is_flag=True, help="with --apply: overwrite the task's existing subtasks")
@one_line_errors("plan")
def decompose_cmd(plan_id: str, task_id: str | None, all_: bool, agent_id: str, apply_: bool, replace: bool) -> None:
    """Decompose task TASK_ID of plan PLAN_ID for agent AGENT_ID and print the guide's response as JSON;
    or, with --all, every part of the plan not yet decomposed, applying what passes the threshold."""
    if all_ == (task_id is not None):
        raise click.UsageError("Give either TASK_ID or --all.")
    admin = Principal("user", "cli", is_admin=True)
    settings = _settings()
    with _database(settings) as db:
        with db.reading() as s:
            caps = agent_access(s, admin, agent_id).capabilities
            req = None if all_ else task_request(s, admin, plan_id, str(task_id), caps)
        if not caps:
            raise click.ClickException(f"Agent {agent_id} has no registered capabilities to decompose into.")
        if req is None:
            _print_plan_decomposition(decompose_plan(db, settings, admin, plan_id, caps))
            return
        done = decompose_task(db, settings, req, apply_to=ApplyTo(admin, plan_id, replace) if apply_ else None)
    click.echo(json.dumps(done.to_response(), indent=2, ensure_ascii=False))
    if apply_ and not done.applied:
        click.echo(f"not applied: confidence {done.result.decomposition_confidence} is below {done.apply_threshold}; "
                   f"edit it and POST it to /api/plans/{plan_id}/tasks/{task_id}/decomposition", err=True)
