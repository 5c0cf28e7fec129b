"""One settings object, read once from the environment; every key has an embedded default.

| variable | default | meaning |
|---|---|---|
| ORCHESTRATOR_DATA_DIR | ./var | folder for the SQLite file, the embedded Redis and the secret key |
| DATABASE_URL | sqlite:///<data dir>/orchestrator.db | SQLAlchemy URL; PostgreSQL in production |
| REDIS_URL | (unset: embedded Redis on a unix socket in the data dir) | broker, event streams, pub/sub |
| REDIS_KEY_PREFIX | orch: | prefix of every key this program writes, so that runs can share a Redis |
| SECRET_KEY | (generated once, kept in the data dir) | signs sessions and stream tokens |
| ENCRYPTION_KEYS | (generated once, kept in the data dir) | Fernet keys of personal data at rest, newest first |
| ORCHESTRATOR_ADMIN_TOKEN | (unset) | creates or updates an admin user whose API token it is |
| ORCHESTRATOR_ADMIN_USER | admin | user name of that admin |
| ORCHESTRATOR_ADMIN_PASSWORD | (unset) | that admin's dashboard password |
| INGEST_SHARDS | 2 | event streams, one drainer each: as many as worker processes; change it with none queued |
| INGEST_BATCH_SIZE | 500 | events a worker applies in one transaction at most |
| INGEST_REPLY_WAIT_MS | 500 | how long an event POST waits for its outcome before answering 202 |
| INGEST_LEASE_SECONDS | 5 | a draining worker's shard lease, renewed while it lives; a dead one's expires this fast |
| NOTIFY_WEBHOOK_URL | (unset) | where blocks are POSTed for owners (signed); a log line is always written |
| NOTIFY_WEBHOOK_SECRET | SECRET_KEY | HMAC-SHA256 key of the `X-Orchestrator-Signature` header |
| HEARTBEAT_WINDOW_SECONDS | 600 | an agent silent this long loses the subtasks it holds |
| CLAIM_ACK_SECONDS | 60 | a claim with no report from its agent this long goes back to the queue, attempt unchanged |
| SWEEP_INTERVAL_SECONDS | 30 | how often beat looks for timed-out subtasks and stale streams |
| POLL_IDLE_SECONDS | 60 | how long, at most, an idle agent's polls are answered from Redis while no work moves |
| POOL_CLAIMERS | 4 | polls of one agent pool that look for its new work at once; the rest get 204 (0: no limit) |
| READY_BACKLOG_SECONDS | 60 | `/readyz` says degraded when a shard's oldest waiting event is older than this |
| WORKER_METRICS_PORT | 0 (off) | a worker serves its host's metrics on this port (containers whose web is elsewhere) |
| MAX_BODY_BYTES | 16777216 (16 MiB) | largest request body the API reads; a larger one is answered 413 |
| ARCHIVE_AFTER_DAYS | 90 | events of an execution that ended this long ago go to the archive (`archive.py`) |
| ARCHIVE_INTERVAL_SECONDS | 3600 | how often beat looks for executions to archive |
| ARCHIVE_LOCATION | <data dir>/archive | folder of the archive files (encrypted gzip JSON Lines), or s3://bucket/path |
| ARCHIVE_S3_ENDPOINT_URL | (unset: AWS) | an S3-compatible service's URL (MinIO...); credentials from boto3's AWS_* |
| ARCHIVE_BATCH_SIZE | 1000 | event rows deleted (or restored) per transaction |
| AGENT_RATE_LIMIT | 100/minute | an agent's requests (a batch is one) unless its `rate_limit_per_minute` is set |
| LOGIN_RATE_LIMIT_PER_USERNAME | 5/minute | dashboard login attempts for one username, from anywhere |
| LOGIN_RATE_LIMIT_PER_ADDRESS | 20/minute | dashboard login attempts from one client address, any usernames |
| LOG_LEVEL | INFO | |
| DECOMPOSER | auto | template, llm, or auto (llm when LLM_BASE_URL is set) |
| LLM_BASE_URL | (unset) | OpenAI-compatible API root of the LLM decomposer, e.g. https://api.openai.com/v1 |
| LLM_API_KEY | (unset) | sent to it as `Authorization: Bearer` |
| LLM_MODEL | gpt-4o-mini | model name |
| LLM_TIMEOUT_SECONDS | 30 | after this the template decomposer answers instead |
| DECOMPOSITION_APPLY_THRESHOLD | 0.75 | confidence (0 to 1) below which a decomposition is only a proposal |
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from limits import parse as parse_rate

N = TypeVar("N", int, float)


_KINDS = {int: "a whole number", float: "a number"}


def _number(env: Mapping[str, str], key: str, default: N, kind: Callable[[str], N]) -> N:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{key} must be {_KINDS[kind]}, got {raw!r}") from exc


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    return _number(env, key, default, int)


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    return _number(env, key, default, float)


def _rate(env: Mapping[str, str], key: str, default: str) -> str:
    """A rate limit in the notation of `limits` ("100/minute", "5 per second"), checked at start-up."""
    value = env.get(key) or default
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ValueError(f"{key} must be a rate such as '100/minute', got {value!r}") from exc
    return value


def _load_or_create_secret(data_dir: Path) -> str:
    # Every process of one installation (web, worker, beat) must sign with the same key,
    # so the generated key is kept beside the data rather than made per process.
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


ENCRYPTION_KEY_FILE = "encryption_keys"


def read_encryption_keys(path: Path) -> tuple[str, ...]:
    """The keys of an `encryption_keys` file: one a line, newest first."""
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _write_temporary(path: Path, keys: tuple[str, ...]) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{key}\n" for key in keys))
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def write_encryption_keys(path: Path, keys: tuple[str, ...]) -> None:
    """Replace the key file at once: a reader sees the old list or the new one, never half of it."""
    os.replace(_write_temporary(path, keys), path)


def _load_or_create_encryption_keys(data_dir: Path) -> tuple[str, ...]:
    # Kept beside the data, as the secret key is, since every process must read what the others
    # wrote. Written whole under a temporary name and linked into place, so that of two processes
    # starting at once one creates the file and the other reads that file complete.
    path = data_dir / ENCRYPTION_KEY_FILE
    if path.exists():
        return read_encryption_keys(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")  # a Fernet key: 32 random bytes
    tmp = _write_temporary(path, (key,))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return read_encryption_keys(path)
    finally:
        tmp.unlink()
    return (key,)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    redis_url: str | None
    redis_key_prefix: str
    secret_key: str
    encryption_keys: tuple[str, ...]
    encryption_key_file: Path | None  # None when ENCRYPTION_KEYS gives the keys
    admin_token: str | None
    admin_user: str
    admin_password: str | None
    ingest_shards: int
    ingest_batch_size: int
    ingest_reply_wait_ms: int
    ingest_lease_seconds: int
    notify_webhook_url: str | None
    notify_webhook_secret: str
    heartbeat_window_seconds: int
    claim_ack_seconds: int
    sweep_interval_seconds: int
    poll_idle_seconds: float
    pool_claimers: int
    ready_backlog_seconds: int
    worker_metrics_port: int
    log_level: str
    max_body_bytes: int
    archive_after_days: int
    archive_interval_seconds: int
    archive_location: str
    archive_s3_endpoint_url: str | None
    archive_batch_size: int
    agent_rate_limit: str
    login_rate_limit_per_username: str
    login_rate_limit_per_address: str
    decomposer: str
    llm_base_url: str | None
    llm_api_key: str | None
    llm_model: str
    llm_timeout_seconds: float
    decomposition_apply_threshold: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("ORCHESTRATOR_DATA_DIR") or "var").resolve()
        database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'orchestrator.db'}"
        secret = env.get("SECRET_KEY") or _load_or_create_secret(data_dir)
        env_keys = tuple(k.strip() for k in (env.get("ENCRYPTION_KEYS") or "").split(",") if k.strip())
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or None,
            redis_key_prefix=env.get("REDIS_KEY_PREFIX", "orch:"),
            secret_key=secret,
            encryption_keys=env_keys or _load_or_create_encryption_keys(data_dir),
            encryption_key_file=None if env_keys else data_dir / ENCRYPTION_KEY_FILE,
            admin_token=env.get("ORCHESTRATOR_ADMIN_TOKEN") or None,
            admin_user=env.get("ORCHESTRATOR_ADMIN_USER") or "admin",
            admin_password=env.get("ORCHESTRATOR_ADMIN_PASSWORD") or None,
            ingest_shards=max(1, _int(env, "INGEST_SHARDS", 2)),
            ingest_batch_size=max(1, _int(env, "INGEST_BATCH_SIZE", 500)),
            ingest_reply_wait_ms=max(0, _int(env, "INGEST_REPLY_WAIT_MS", 500)),
            ingest_lease_seconds=max(1, _int(env, "INGEST_LEASE_SECONDS", 5)),
            notify_webhook_url=env.get("NOTIFY_WEBHOOK_URL") or None,
            notify_webhook_secret=env.get("NOTIFY_WEBHOOK_SECRET") or secret,
            heartbeat_window_seconds=_int(env, "HEARTBEAT_WINDOW_SECONDS", 600),
            claim_ack_seconds=max(1, _int(env, "CLAIM_ACK_SECONDS", 60)),
            sweep_interval_seconds=max(1, _int(env, "SWEEP_INTERVAL_SECONDS", 30)),
            poll_idle_seconds=max(0.0, _float(env, "POLL_IDLE_SECONDS", 60.0)),
            pool_claimers=max(0, _int(env, "POOL_CLAIMERS", 4)),
            ready_backlog_seconds=max(1, _int(env, "READY_BACKLOG_SECONDS", 60)),
            worker_metrics_port=max(0, _int(env, "WORKER_METRICS_PORT", 0)),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            max_body_bytes=max(1024, _int(env, "MAX_BODY_BYTES", 16 * 1024 * 1024)),
            archive_after_days=max(1, _int(env, "ARCHIVE_AFTER_DAYS", 90)),
            archive_interval_seconds=max(60, _int(env, "ARCHIVE_INTERVAL_SECONDS", 3600)),
            archive_location=env.get("ARCHIVE_LOCATION") or str(data_dir / "archive"),
            archive_s3_endpoint_url=env.get("ARCHIVE_S3_ENDPOINT_URL") or None,
            archive_batch_size=max(1, _int(env, "ARCHIVE_BATCH_SIZE", 1000)),
            agent_rate_limit=_rate(env, "AGENT_RATE_LIMIT", "100/minute"),
            login_rate_limit_per_username=_rate(env, "LOGIN_RATE_LIMIT_PER_USERNAME", "5/minute"),
            login_rate_limit_per_address=_rate(env, "LOGIN_RATE_LIMIT_PER_ADDRESS", "20/minute"),
            decomposer=(env.get("DECOMPOSER") or "auto").lower(),
            llm_base_url=env.get("LLM_BASE_URL") or None,
            llm_api_key=env.get("LLM_API_KEY") or None,
            llm_model=env.get("LLM_MODEL") or "gpt-4o-mini",
            llm_timeout_seconds=_float(env, "LLM_TIMEOUT_SECONDS", 30.0),
            decomposition_apply_threshold=max(0.0, min(1.0, _float(env, "DECOMPOSITION_APPLY_THRESHOLD", 0.75))),
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
