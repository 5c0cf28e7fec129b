"""The per-process principal cache follows the access epoch: what was loaded under an epoch the cache
has left is never served, whatever the order in which threads read and store."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.credentials import Principal
from orchestrator.models import utcnow
from web.principal_cache import PrincipalCache

MARK = Principal("user", "user_mark", via="cred_1")


def test_entries_live_under_the_epoch_they_were_loaded_under() -> None:
    cache = PrincipalCache()
    assert cache.get("k") is None
    cache.put("k", MARK, b"e1")  # nothing read yet: not stored
    assert cache.get("k") is None
    cache.observe(b"e1")
    cache.put("k", MARK, b"e1")
    hit = cache.get("k")
    assert hit is not None and hit.principal == MARK and hit.epoch == b"e1"
    cache.observe(b"e1")
    assert cache.get("k") is not None
    cache.observe(b"e2")  # a revocation anywhere
    assert cache.get("k") is None


def test_a_load_that_straddles_a_revocation_is_not_stored() -> None:
    cache = PrincipalCache()
    cache.observe(b"e1")  # thread A reads e1, then asks the database (before the revocation commits)
    cache.observe(b"e2")  # thread B has read the epoch the revocation set
    cache.put("k", MARK, b"e1")  # A's answer arrives late
    assert cache.get("k") is None


def test_a_lost_epoch_key_empties_the_cache_too() -> None:
    cache = PrincipalCache()
    cache.observe(b"e1")
    cache.put("k", MARK, b"e1")
    cache.observe(None)  # Redis lost the key (restart, flush)
    assert cache.get("k") is None


def test_entries_end_with_their_tokens_expiry_and_their_time_to_live() -> None:
    cache = PrincipalCache()
    cache.observe(None)
    cache.put("expired", Principal("user", "u", until=utcnow() - timedelta(seconds=1)), None)
    cache.put("later", Principal("user", "u", until=utcnow() + timedelta(hours=1)), None)
    assert cache.get("expired") is None and cache.get("later") is not None
    short = PrincipalCache(ttl=-1)
    short.observe(None)
    short.put("k", MARK, None)
    assert short.get("k") is None


def test_a_full_cache_makes_room_by_dropping_its_oldest_entries(monkeypatch) -> None:
    """Emptying a full cache at once sent every agent of a large fleet back to the database together."""
    monkeypatch.setattr("web.principal_cache._MAX_ENTRIES", 10)
    cache = PrincipalCache()
    cache.observe(None)
    for i in range(10):
        cache.put(f"k{i}", MARK, None)
    cache.put("k10", MARK, None)
    assert cache.get("k0") is None  # the oldest tenth made room
    assert all(cache.get(f"k{i}") is not None for i in range(1, 11))
