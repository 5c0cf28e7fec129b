"""Personal data encrypted at rest: the keyring, and the column types every read and write goes through.

A column typed `EncryptedText` or `EncryptedJSON` holds a Fernet token (cryptography's recipe:
AES-128-CBC with an HMAC-SHA256, a fresh IV per value), never the value. The types find their keys on
the engine's dialect, where `Database` puts its keyring (`use_keyring`): nothing is global, and an
engine nobody gave keys to refuses to read or write such a column rather than guess.

Keys are a list, newest first (MultiFernet): the first encrypts, every one decrypts. They come from
ENCRYPTION_KEYS, or from the data dir's `encryption_keys` file (`orchestrator/settings.py`). A
keyring loaded from the file follows it: it looks at the file at most every `RELOAD_CHECK_SECONDS`
while it encrypts, and at once when it meets a token its keys cannot open, so that `orchestrator keys
rotate` reaches the running web and worker processes without a restart. A keyring given by
ENCRYPTION_KEYS cannot follow anything: those processes must be restarted with the new list.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Engine, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from orchestrator.settings import Settings, read_encryption_keys

log = logging.getLogger(__name__)

# How stale a process's idea of the newest key may be while it writes: what `keys rotate --drop-old`
# waits out (with margin) before its last pass.
RELOAD_CHECK_SECONDS = 2.0
_DIALECT_ATTRIBUTE = "orchestrator_keyring"


class EncryptionKeyError(RuntimeError):
    """Keys that are no Fernet keys, or stored data that the configured keys cannot decrypt."""


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def fingerprint(key: str) -> str:
    """A short name for a key in logs and listings that tells nothing about the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _fernets(keys: Sequence[str], source: str) -> list[Fernet]:
    if not keys:
        raise EncryptionKeyError(f"no encryption key in {source}")
    fernets = []
    for n, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise EncryptionKeyError(f"encryption key {n} of {len(keys)} in {source} is not a Fernet key "
                                     "(32 url-safe base64-encoded bytes)") from None
    return fernets


@dataclass(frozen=True)
class _Keys:
    """One consistent set, swapped whole on a reload (a single attribute write, so threads need no lock)."""

    keys: tuple[str, ...]
    primary: Fernet
    all: MultiFernet
    stamp: tuple[int, int, int] | None  # the key file's (inode, size, mtime) when it was read


class Keyring:
    """The keys of one process: encrypt with the newest, decrypt with any."""

    def __init__(self, keys: Sequence[str], path: Path | None = None,
                 reload_every: float = RELOAD_CHECK_SECONDS) -> None:
        self.path = path
        self.reload_every = reload_every
        self.source = f"the key file {path}" if path is not None else "ENCRYPTION_KEYS"
        fernets = _fernets(keys, self.source)
        self._keys = _Keys(tuple(keys), fernets[0], MultiFernet(fernets), None)
        # Read the file now: the keys given may be a settings object's, read before a rotation.
        self.reload_if_changed()
        self._checked = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        return cls(settings.encryption_keys, settings.encryption_key_file)

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys.keys

    def encrypt(self, data: bytes) -> str:
        if self.path is not None and time.monotonic() - self._checked >= self.reload_every:
            self._checked = time.monotonic()
            self.reload_if_changed()
        return self._keys.primary.encrypt(data).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        try:
            return self._keys.all.decrypt(token)
        except InvalidToken:
            pass
        if self.reload_if_changed():  # rotated under our feet: the file has the key
            try:
                return self._keys.all.decrypt(token)
            except InvalidToken:
                pass
        raise EncryptionKeyError(
            f"stored data cannot be decrypted with the encryption keys from {self.source}: it was written "
            "under another key, or it is not an encrypted value") from None

    def is_current(self, token: str) -> bool:
        """Whether the newest key alone opens `token` (what a rotation need not touch)."""
        try:
            self._keys.primary.decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: str) -> str:
        """`token`'s value encrypted again under the newest key."""
        try:
            return self._keys.all.rotate(token).decode("ascii")
        except InvalidToken:
            self.decrypt(token)  # reloads the key file if it changed, or raises the clear error
            return self._keys.all.rotate(token).decode("ascii")

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Read the key file again if it changed since it was read; True when the keys changed."""
        stamp = self._stamp()
        if self.path is None or stamp is None or stamp == self._keys.stamp:
            return False
        try:
            keys = read_encryption_keys(self.path)
            fernets = _fernets(keys, self.source)
        except (OSError, EncryptionKeyError) as exc:
            log.error("encryption keys not reloaded, keeping the %d loaded: %s", len(self.keys), exc)
            return False
        changed = keys != self._keys.keys
        self._keys = _Keys(keys, fernets[0], MultiFernet(fernets), stamp)
        if changed:
            log.info("encryption keys reloaded from %s: %d keys, newest %s", self.path, len(keys),
                     fingerprint(keys[0]))
        return changed


def use_keyring(engine: Engine, keyring: Keyring) -> None:
    """Make `engine` read and write its encrypted columns with `keyring`."""
    setattr(engine.dialect, _DIALECT_ATTRIBUTE, keyring)


def _keyring(dialect: Dialect) -> Keyring:
    try:
        return getattr(dialect, _DIALECT_ATTRIBUTE)
    except AttributeError:
        raise EncryptionKeyError("this engine has no encryption keys: encrypted columns are read and written "
                                 "through orchestrator.db.Database, which gives its engines their keyring") from None


def _dumps(value: Any) -> bytes:
    # orjson, as the API's bodies are parsed: what `check_storable` let in (int64, finite floats) it
    # writes back unchanged, and it is a fraction of the encryption's own cost.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class _Opaque(Text.Comparator[str]):
    """SQL sees ciphertext with a fresh IV each time: an equality, a LIKE or an ordering on it would
    quietly match nothing or sort noise, so anything but IS [NOT] NULL is refused when it is written."""

    def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
        # Column against column is let through: SQLAlchemy itself compares a statement's columns so
        # (a cached Core statement's result map does, on its second run); a value never is.
        columns = op in (operators.eq, operators.ne) and all(isinstance(o, ColumnElement) for o in other)
        if op not in (operators.is_, operators.is_not) and not columns:
            raise TypeError(f"{self.expr} is encrypted: SQL cannot compare, search or order it")
        return super().operate(op, *other, **kwargs)

    def reverse_operate(self, op: Any, other: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.expr} is encrypted: SQL cannot compare, search or order it")


class EncryptedText(TypeDecorator[str]):
    """A string stored as a Fernet token."""

    impl = Text
    cache_ok = True
    comparator_factory = _Opaque

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else _keyring(dialect).encrypt(value.encode())

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else _keyring(dialect).decrypt(value).decode()


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value stored as a Fernet token of its serialisation; None is SQL NULL."""

    impl = Text
    cache_ok = True
    comparator_factory = _Opaque

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else _keyring(dialect).encrypt(_dumps(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else orjson.loads(_keyring(dialect).decrypt(value))
