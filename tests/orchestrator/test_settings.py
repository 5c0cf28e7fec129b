from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import Settings


def test_embedded_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'orchestrator.db'}"
    assert s.redis_url is None and s.is_sqlite
    # The generated secret is kept, so every process of the installation signs alike.
    assert Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path)}).secret_key == s.secret_key
    assert len(s.secret_key) > 40


def test_environment_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({
        "ORCHESTRATOR_DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1/x",
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "SECRET_KEY": "k",
        "INGEST_SHARDS": "4",
    })
    assert (s.database_url, s.redis_url, s.secret_key, s.ingest_shards) == (
        "postgresql://postgres@127.0.0.1/x", "redis://127.0.0.1:6379/3", "k", 4)
    assert not s.is_sqlite
    assert s.replace(ingest_shards=2).ingest_shards == 2


def test_bad_number_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INGEST_SHARDS"):
        Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path), "INGEST_SHARDS": "many"})
