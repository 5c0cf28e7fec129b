"""`orchestrator archive run` and `orchestrator archive restore`, as an operator types them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from orchestrator.db import Database
from orchestrator.models import Execution, ExecutionEvent, utcnow
from orchestrator.settings import Settings
from tests.factories import make_execution, make_user


def _count(db: Database) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(ExecutionEvent)) or 0


def test_archive_run_dry_run_and_restore(db: Database, migrated: Settings, tmp_path: Path) -> None:
    env = {"DATABASE_URL": migrated.database_url, "ORCHESTRATOR_DATA_DIR": str(migrated.data_dir),
           "SECRET_KEY": migrated.secret_key, "ARCHIVE_LOCATION": str(tmp_path / "archive"),
           "ARCHIVE_BATCH_SIZE": "2"}

    def invoke(*args: str):
        return CliRunner().invoke(main, ["archive", *args], env=env)

    with db.unit_of_work() as s:
        owner = make_user(s)
        for name, days in (("exec_old", 91), ("exec_new", 80)):
            ex = make_execution(s, owner, status="CANCELLED", execution_id=name)
            ex.completed_at = utcnow() - timedelta(days=days)
            for n in range(4):
                s.add(ExecutionEvent(id=f"evt_{name}_{n}", execution_id=name, source="user", event_type="note",
                                     message=f"note {n}"))
    assert _count(db) == 10

    dry = invoke("run", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == ["[1/1] exec_old: 5 events would be archived",
                                       "dry run: 1 executions, 5 events would be archived"]
    assert _count(db) == 10 and not (tmp_path / "archive").exists()

    done = invoke("run", "--older-than", "70d")
    assert done.exit_code == 0, done.output
    (path_old,) = sorted((tmp_path / "archive").glob("exec_old.*"))
    assert f"[1/2] exec_old: 5 events -> {path_old}" in done.output
    assert done.output.splitlines()[-1] == "archived 2 executions, 10 events" and _count(db) == 0
    assert invoke("run").output.startswith("nothing to archive")

    back = invoke("restore", "exec_old")
    assert back.exit_code == 0, back.output
    assert back.output.splitlines() == ["exec_old: 2/5 events restored", "exec_old: 4/5 events restored",
                                        "exec_old: 5 events restored"]
    assert _count(db) == 5 and not path_old.exists()
    with db.reading() as s:
        assert s.get(Execution, "exec_old").restored_at is not None

    again = invoke("restore", "exec_old")
    assert again.exit_code == 1 and again.output.startswith("Error: The events of execution exec_old are not archived.")
    assert len(again.output.strip().splitlines()) == 1
    assert invoke("restore", "exec_nothing").exit_code == 1
    bad = invoke("run", "--older-than", "3 weeks")
    assert bad.exit_code == 2 and "not an age" in bad.output
