"""The prospects CSV: load and validate every row, deduplicate, and write status changes back.

The header is `name,business,email,phone,status,notes`; more columns are kept as they are. A bad row is
a `ProspectError` naming its line, never a crash half-way. Several Larry processes update the same
file: each change holds an exclusive `flock` on a lock file beside it, reads the file again, and
replaces it atomically (a temporary file in the same folder, then `os.replace`), so a reader sees the
old file or the new one, never half of one, and no process overwrites another's change.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("name", "business", "email", "phone", "status", "notes")
STATUSES = ("new", "contacted", "discovery", "proposal", "proposal_sent", "followed_up", "blocked", "cancelled",
            "failed")
_EMAIL = re.compile(r"^[^@\s,;<>]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
_PHONE = re.compile(r"^\+?[0-9 ().-]{7,20}$")


class ProspectError(ValueError):
    """The CSV cannot be used as it is; `problems` are one line each, with their line numbers."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass
class Prospect:
    line: int  # in the file, the header being line 1
    name: str
    business: str
    email: str
    phone: str
    status: str
    notes: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else self.name


def _row_problems(row: dict[str, str | None], line: int) -> list[str]:
    problems = []
    if not (row.get("name") or "").strip():
        problems.append(f"line {line}: the name is empty")
    email = (row.get("email") or "").strip()
    if not _EMAIL.match(email):
        problems.append(f"line {line}: {email!r} is not an email address" if email else f"line {line}: no email")
    phone = (row.get("phone") or "").strip()
    if phone and not _PHONE.match(phone):
        problems.append(f"line {line}: {phone!r} is not a phone number")
    status = (row.get("status") or "").strip() or "new"
    if status not in STATUSES:
        problems.append(f"line {line}: status {status!r} is not one of {', '.join(STATUSES)}")
    if None in row:  # csv.DictReader puts surplus cells under the key None
        problems.append(f"line {line}: more cells than columns")
    return problems


def parse_prospects(text: str, path: str | Path = "<csv>") -> list[Prospect]:
    """Every row of `text`, validated; duplicates (same email, case aside) are dropped, the first kept.
    Raises `ProspectError` listing every bad row (and a missing column) at once."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ProspectError(path, [f"line 1: the header lacks {', '.join(missing)}"])
    reader.fieldnames = header
    out: list[Prospect] = []
    problems: list[str] = []
    seen: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # a blank line
        bad = _row_problems(row, line)
        if bad:
            problems += bad
            continue
        email = (row["email"] or "").strip()
        if email.lower() in seen:
            continue
        seen.add(email.lower())
        extra = {k: v or "" for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None}
        out.append(Prospect(line, row["name"].strip(), (row["business"] or "").strip(), email,
                            (row["phone"] or "").strip(), (row["status"] or "").strip() or "new",
                            (row["notes"] or "").strip(), extra))
    if problems:
        raise ProspectError(path, problems)
    return out


def load_prospects(path: str | Path) -> list[Prospect]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProspectError(path, [f"cannot read the file: {exc}"]) from exc
    return parse_prospects(text, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_status(path: str | Path, email: str, status: str, note: str | None = None) -> bool:
    """Set the status (and append `note` to the notes) of the row with `email`; False when no row has it.
    Other rows, columns and their order are kept as they are."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    path = Path(path)
    with _locked(path):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        found = False
        for row in rows:
            if (row.get("email") or "").strip().lower() == email.strip().lower():
                row["status"] = status
                if note:
                    row["notes"] = "; ".join(x for x in ((row.get("notes") or "").strip(), note) if x)
                found = True
        if found:
            _replace(path, fields, rows)
        return found


def _replace(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
