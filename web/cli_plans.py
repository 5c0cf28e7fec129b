"""`orchestrator plans ...`: import, export and decompose plans from the command line.

Errors are one line on stderr and a non-zero exit (never a traceback); nothing is written on error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from marshmallow import ValidationError
from sqlalchemy import select

from orchestrator.credentials import Principal
from orchestrator.db import Database
from orchestrator.errors import DomainError
from orchestrator.models import User, utcnow
from orchestrator.settings import Settings


@click.group()
def plans() -> None:
    """Plans: import (PlanExe folders, plan files), export, decompose."""


@contextmanager
def _database() -> Iterator[Database]:
    try:
        db = Database(Settings.from_env())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield db
    finally:
        db.dispose()


def _details(details: dict[str, Any]) -> str:
    return f" ({json.dumps(details, default=str)[:400]})" if details else ""


def _one_line_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Domain and input errors become ClickException (exit 1, one line); so do database errors."""
    import functools

    from sqlalchemy.exc import SQLAlchemyError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except DomainError as exc:
            raise click.ClickException(exc.message + _details(exc.details)) from exc
        except ValidationError as exc:
            raise click.ClickException(f"The plan is not valid: {json.dumps(exc.messages)[:600]}") from exc
        except SQLAlchemyError as exc:
            raise click.ClickException(f"Database error: {str(exc).splitlines()[0]}") from exc

    return wrapper


def _principal(db: Database, username: str | None) -> Principal:
    """The user the command acts for: --owner, else the configured admin user."""
    name = username or Settings.from_env().admin_user
    with db.reading() as s:
        user = s.scalar(select(User).where(User.username == name))
        if user is None:
            raise click.ClickException(f"No user named {name!r}; pass --owner with an existing user name.")
        return Principal("user", user.id, user.is_admin)


def _read_input(path: Path) -> tuple[dict[str, str | bytes], str | None]:
    from orchestrator.planexe import looks_like_planexe, read_folder

    if not path.exists():
        raise click.ClickException(f"{path} does not exist.")
    if path.is_dir():
        files = read_folder(path)
        if not files:
            raise click.ClickException(f"{path} holds no PlanExe files (wbs_level2.json, ...).")
        return files, "planexe"
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"Cannot read {path}: {exc.strerror or exc}") from exc
    return {path.name: content}, "planexe" if looks_like_planexe([path.name]) else "plan"


@plans.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--owner", help="user name of the plan's owner (default: ORCHESTRATOR_ADMIN_USER)")
@_one_line_errors
def import_cmd(path: Path, owner: str | None) -> None:
    """Import PATH: a PlanExe output folder or file, or a plan file (YAML/JSON)."""
    from orchestrator.plans import create_plan
    from web.api.imports import plan_data_from_files

    files, fmt = _read_input(path)
    data, warnings, source = plan_data_from_files(files, fmt)
    with _database() as db:
        principal = _principal(db, owner)
        with db.unit_of_work() as s:
            plan = create_plan(s, principal.id, data, utcnow(), source=source)
            plan_id, n_tasks = plan.id, len(plan.tasks)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"imported {plan_id} ({n_tasks} tasks)")


@plans.command("export")
@click.argument("plan_id")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@_one_line_errors
def export_cmd(plan_id: str, fmt: str) -> None:
    """Write plan PLAN_ID to stdout in the plan file format."""
    from orchestrator.plan_files import dump_plan
    from orchestrator.plans import get_plan, plan_to_dict

    with _database() as db, db.reading() as s:
        text = dump_plan(plan_to_dict(get_plan(s, Principal("user", "cli", is_admin=True), plan_id)), fmt)
    click.echo(text, nl=False)


@plans.command("decompose")
@click.argument("plan_id")
@click.argument("task_id")
@click.option("--agent", "agent_id", required=True, help="the agent whose capabilities bound the actions")
@click.option("--apply", "apply_", is_flag=True, help="store it when confidence reaches the threshold")
@click.option("--replace", is_flag=True, help="with --apply: overwrite the task's existing subtasks")
@_one_line_errors
def decompose_cmd(plan_id: str, task_id: str, agent_id: str, apply_: bool, replace: bool) -> None:
    """Decompose task TASK_ID of plan PLAN_ID for agent AGENT_ID; print the guide's response as JSON."""
    from orchestrator.decomposition import (
        DecompositionConfig,
        agent_access,
        apply_decomposition,
        decomposer_for,
        task_request,
    )

    admin = Principal("user", "cli", is_admin=True)
    with _database() as db:
        with db.reading() as s:
            caps = agent_access(s, admin, agent_id).capabilities
            req = task_request(s, admin, plan_id, task_id, caps)
        if not caps:
            raise click.ClickException(f"Agent {agent_id} has no registered capabilities to decompose into.")
        result = decomposer_for(None).decompose(req)
        body = result.to_response()
        if apply_:
            threshold = DecompositionConfig.from_env().apply_threshold
            applied = result.decomposition_confidence >= threshold and bool(result.decomposed_subtasks)
            if applied:
                with db.unit_of_work() as s:
                    apply_decomposition(s, admin, plan_id, task_id, result, utcnow(), replace=replace)
            body.update(applied=applied, proposal=not applied, apply_threshold=threshold)
    click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    if apply_ and not body["applied"]:
        click.echo(f"not applied: confidence {result.decomposition_confidence} is below {body['apply_threshold']}; "
                   f"edit it and POST it to /api/plans/{plan_id}/tasks/{task_id}/decomposition", err=True)
