"""The relay's Sequencer: event messages leave in commit order, held at most a short while for a gap."""

from __future__ import annotations

from web.relay import Sequencer


def event(seq: int, first: int | None = None) -> dict:
    msg = {"type": "event", "event_id": f"evt_{seq}", "seq": seq}
    if first is not None:
        msg["commit_range"] = [first, seq]
    return msg


UPDATE = {"type": "execution_update", "execution_id": "exec_1"}


def ids(msgs: list[dict]) -> list[str]:
    return [m.get("event_id", m["type"]) for m in msgs]


def test_in_order_messages_go_at_once() -> None:
    seq = Sequencer(hold=0.2)
    assert ids(seq.push(event(1), 0.0)) == ["evt_1"]
    assert ids(seq.push(event(2), 0.0)) == ["evt_2"]
    assert ids(seq.push(UPDATE, 0.0)) == ["execution_update"]
    assert seq.wait(0.0) == 5.0


def test_a_later_commit_waits_for_the_earlier_one() -> None:
    seq = Sequencer(hold=0.2)
    seq.push(event(1), 0.0)
    assert seq.push(event(4), 0.01) == []
    assert seq.push(UPDATE, 0.02) == []  # keeps its place behind the held event
    assert abs(seq.wait(0.05) - 0.16) < 1e-9
    # Position 2 was drawn by the same commit as 3 but never published: no gap left.
    assert ids(seq.push(event(3, first=2), 0.05)) == ["evt_3", "evt_4", "execution_update"]


def test_a_gap_is_given_up_on_after_the_hold() -> None:
    seq = Sequencer(hold=0.25)
    seq.push(event(1), 0.0)
    assert seq.push(event(3), 0.0) == [] and seq.push(event(5), 0.125) == []
    assert seq.release(0.2) == []
    assert ids(seq.release(0.25)) == ["evt_3"]  # waited long enough for 2; 5 waits its own time for 4
    assert seq.release(0.3) == []
    assert ids(seq.release(0.375)) == ["evt_5"]
    assert ids(seq.push(event(4), 0.4)) == ["evt_4"]  # late: straight through
    assert ids(seq.push(event(6), 0.5)) == ["evt_6"]
