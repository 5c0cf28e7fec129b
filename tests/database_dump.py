"""What a database keeps on disk, as an attacker holding a copy would read it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url


def database_dump(database_url: str) -> bytes:
    """Every byte the database keeps: the SQLite file with its write-ahead log, or pg_dump's output."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    args = ["pg_dump", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres",
            url.database or ""]
    env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
    return subprocess.run(args, check=True, capture_output=True, timeout=120, env=env).stdout
