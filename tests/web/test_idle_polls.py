"""Idle polls answered from Redis (orchestrator/ready_work.py): answered without the database while
nothing moves, and never to the cost of work that is ready. Each way work becomes ready (or a
holder's answer changes) is made to happen after the agent's polls found nothing, and the next poll
must see it; the markers live POLL_IDLE_SECONDS (60 s) here, far longer than any test waits, so only
the change itself can send a poll back to the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from orchestrator_sdk.client import SignedAuth
from sqlalchemy import Engine, event, select

from orchestrator.credentials import issue_credential
from orchestrator.effects import AfterCommit, carry_out
from orchestrator.executions import create_execution
from orchestrator.models import Agent, Execution, ExecutionSubtask, Plan, PlanSubtask, PlanTask, utcnow
from orchestrator.ready_work import ClaimSlots, Pool, idle_key, version_key
from orchestrator.scheduling import claim_work
from orchestrator.sweeper import release_overdue_work
from tests.factories import block_subtask, make_agent, make_user_with_token
from tests.workers.helpers import assert_each_claimed_once, hold_database_write_lock


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements any engine of this process sends inside the block."""
    sent: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", count)


class Scene:
    """An operator (Mark, unless named) with his token, plans of parallel subtasks, and agents with their keys."""

    def __init__(self, db, client, username: str = "mark") -> None:
        self.db, self.client = db, client
        with db.unit_of_work() as s:
            self.owner, self.token = make_user_with_token(s, username)
        self.keys: dict[str, str] = {}
        self.auths: dict[str, SignedAuth] = {}  # for requests over real HTTP: key and signature

    def agent(self, agent_id: str, owned: bool = True, actions: tuple[str, ...] = ("send_email",)) -> str:
        with self.db.unit_of_work() as s:
            agent = make_agent(s, agent_id, owner_id=self.owner.id if owned else None,
                               capabilities=[{"action": a, "params": []} for a in actions])
            _, self.keys[agent_id] = issue_credential(s, agent_id=agent_id)
            self.auths[agent_id] = SignedAuth(self.keys[agent_id], agent.signing_secret)
        return agent_id

    def agents(self, *agent_ids: str) -> None:
        for agent_id in agent_ids:
            self.agent(agent_id)

    def plan(self, plan_id: str, n: int = 2, chained: bool = False, retry_policy: dict | None = None) -> str:
        with self.db.unit_of_work() as s:
            plan = Plan(id=plan_id, goal="Reach the leads", owner_id=self.owner.id)
            task = PlanTask(id="task_0", title="Outreach", description="d", position=0)
            for i in range(n):
                task.subtasks.append(PlanSubtask(
                    plan_id=plan_id, id=f"s{i}", title=f"Lead {i}", action="send_email", position=i,
                    params={"to": f"lead{i}@example.com"}, retry_policy=retry_policy or {"max_attempts": 3},
                    prerequisite_subtask_ids=[f"s{i - 1}"] if chained and i else []))
            plan.tasks.append(task)
            s.add(plan)
        return plan_id

    def start(self, plan_id: str, execution_id: str, agent_id: str | None = None) -> str:
        """Create and queue an execution as an operator does, through the API."""
        resp = self.client.post("/api/executions", headers=bearer(self.token),
                                json={"plan_id": plan_id, "execution_id": execution_id, "agent_id": agent_id})
        assert resp.status_code == 201, resp.get_data(as_text=True)
        assert self.control(execution_id, "QUEUED") == "QUEUED"
        return execution_id

    def control(self, execution_id: str, status: str) -> str:
        resp = self.client.patch(f"/api/executions/{execution_id}", headers=bearer(self.token), json={"status": status})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json()["status"]

    def poll(self, agent_id: str):
        return self.client.get(f"/api/agents/{agent_id}/work", headers=bearer(self.keys[agent_id]))

    def idle(self, *agent_ids: str) -> None:
        """Each agent polls until a poll of its is answered without the database (twice at most: the
        first may be its first, which looks)."""
        for agent_id in agent_ids:
            assert self.poll(agent_id).status_code == 204
            with statements() as sent:
                assert self.poll(agent_id).status_code == 204
            assert sent == [], sent

    def report(self, agent_id: str, execution_id: str, event_type: str, subtask_id: str, **more):
        resp = self.client.post(f"/api/executions/{execution_id}/events", headers=bearer(self.keys[agent_id]),
                                json={"agent_id": agent_id, "event_type": event_type, "task_id": subtask_id, **more})
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.get_json()

    def acknowledge(self, execution_id: str, subtask_id: str) -> None:
        """As the worker does when it applies the holder's `task_started`."""
        with self.db.unit_of_work() as s:
            s.get(ExecutionSubtask, f"{execution_id}:{subtask_id}").acknowledged_at = utcnow()


@pytest.fixture
def scene(db, client) -> Scene:
    return Scene(db, client)


def test_an_idle_agent_is_answered_from_redis(scene) -> None:
    scene.agent("agent_a")
    first = scene.poll("agent_a")
    assert first.status_code == 204 and first.data == b""
    with statements() as sent:
        again = scene.poll("agent_a")
    assert again.status_code == 204 and again.data == b"" and sent == []


def test_work_an_operator_queues_reaches_agents_whose_polls_found_nothing(scene) -> None:
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_two")
    scene.idle("agent_a", "agent_b")
    scene.start("plan_two", "exec_two")
    got = {scene.poll(agent_id).get_json()["next_task"]["task_id"] for agent_id in ("agent_a", "agent_b")}
    assert got == {"s0", "s1"}


def test_one_look_at_the_database_answers_a_whole_pool(scene, redis, migrated) -> None:
    """Free agents of one owner doing the same actions share the pool's marker: after the version
    moves, one of them looks (one query), and the others are answered from Redis again."""
    scene.agents("agent_a", "agent_b", "agent_c")
    scene.idle("agent_a", "agent_b", "agent_c")
    carry_out(redis, migrated.redis_key_prefix, AfterCommit(work_moved={scene.owner.id}))  # Mark's work moved
    with statements() as looked:
        assert scene.poll("agent_a").status_code == 204
    assert len([s for s in looked if s.lstrip().upper().startswith("SELECT")]) == 1, looked
    for agent_id in ("agent_b", "agent_c"):
        with statements() as sent:
            assert scene.poll(agent_id).status_code == 204
        assert sent == []


def test_while_a_pools_claim_slots_are_taken_its_polls_wait_without_the_database(scene, redis, migrated) -> None:
    """New work in a pool is looked for by POOL_CLAIMERS polls at once; the others are answered 204
    from Redis meanwhile, and the work is handed out once a slot is free."""
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_two")
    scene.idle("agent_a", "agent_b")
    scene.start("plan_two", "exec_two")  # the pool's marker is out of date now
    pool = Pool(scene.owner.id, frozenset({"send_email"}))
    slots = ClaimSlots(redis, migrated.redis_key_prefix, migrated.pool_claimers)
    taken = [slots.take(pool) for _ in range(migrated.pool_claimers)]  # other polls are looking
    assert None not in taken and slots.take(pool) is None
    with statements() as sent:
        assert scene.poll("agent_a").status_code == 204
    assert sent == []
    taken[0].give_back()
    assert scene.poll("agent_a").get_json()["next_task"]["task_id"] == "s0"


def test_a_claim_slot_is_given_back_only_by_its_holder_and_expires_alone(redis, migrated) -> None:
    pool = Pool(None, None)
    slots = ClaimSlots(redis, migrated.redis_key_prefix, 1, seconds=0.2)
    first = slots.take(pool)
    assert first is not None and slots.take(pool) is None
    time.sleep(0.3)  # its poll died without giving it back
    second = slots.take(pool)
    assert second is not None
    first.give_back()  # late: the slot is the second poll's now
    assert slots.take(pool) is None
    second.give_back()
    assert slots.take(pool) is not None
    unlimited = ClaimSlots(redis, migrated.redis_key_prefix, 0)
    assert all(unlimited.take(pool) is not None for _ in range(10))


def test_another_operators_work_sends_only_agents_that_may_do_it_to_the_database(scene, db, client) -> None:
    """Agents watch their operator's version: Olga's work does not send Mark's idle agents back to the
    database, while an unowned agent, who may do anyone's work, finds it."""
    scene.agent("agent_mark")
    scene.agent("agent_anyone", owned=False)
    scene.idle("agent_mark", "agent_anyone")
    olga = Scene(db, client, "olga")
    olga.plan("plan_olga")
    olga.start("plan_olga", "exec_olga")
    with statements() as sent:
        assert scene.poll("agent_mark").status_code == 204
    assert sent == []
    work = scene.poll("agent_anyone")
    assert work.status_code == 200 and work.get_json()["execution_id"] == "exec_olga"


def test_another_pool_keeps_its_own_answer(scene, redis, migrated) -> None:
    """An agent of other actions is not answered from the first pool's marker."""
    scene.agent("agent_mail")
    scene.agent("agent_phone", actions=("make_phone_call",))
    scene.plan("plan_mail")
    scene.idle("agent_mail", "agent_phone")
    scene.start("plan_mail", "exec_mail")
    assert scene.poll("agent_phone").status_code == 204  # it looked: nothing it can do
    assert scene.poll("agent_mail").status_code == 200


@pytest.mark.integration
def test_work_an_applied_event_makes_ready_is_found(scene, redis, migrated, worker) -> None:
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_chain", n=2, chained=True)
    scene.start("plan_chain", "exec_chain")
    assert scene.poll("agent_a").get_json()["next_task"]["task_id"] == "s0"
    scene.idle("agent_b")  # s1 waits for s0
    before = int(redis.get(version_key(migrated.redis_key_prefix)) or 0)
    scene.report("agent_a", "exec_chain", "task_started", "s0")
    scene.report("agent_a", "exec_chain", "task_complete", "s0", status="success")
    _until(lambda: int(redis.get(version_key(migrated.redis_key_prefix)) or 0) > before)  # the worker's after-commit
    work = scene.poll("agent_b")
    assert work.status_code == 200 and work.get_json()["next_task"]["task_id"] == "s1"


@pytest.mark.integration
def test_the_worker_raises_the_version_before_it_answers_the_report(scene, redis, migrated, worker) -> None:
    """Told that its report was applied, an agent may poll at once: the worker's round trip after the
    commit raises the ready-work version ahead of the answer (Redis's own log of commands shows the
    order), so that poll is not answered from a marker the report made stale."""
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_chain", n=2, chained=True)
    scene.start("plan_chain", "exec_chain")
    assert scene.poll("agent_a").get_json()["next_task"]["task_id"] == "s0"
    scene.report("agent_a", "exec_chain", "task_started", "s0")
    scene.idle("agent_b")  # s1 waits for s0
    commands: list[str] = []
    stop = threading.Event()
    with redis.monitor() as monitor:
        def listen() -> None:
            for command in monitor.listen():
                commands.append(command["command"])
                if stop.is_set():
                    return
        listening = threading.Thread(target=listen, daemon=True)
        listening.start()
        scene.report("agent_a", "exec_chain", "task_complete", "s0", status="success")
        work = scene.poll("agent_b")
        stop.set()
        redis.ping()  # wakes the listener up
        listening.join(timeout=10)
    assert work.status_code == 200 and work.get_json()["next_task"]["task_id"] == "s1"
    raised = next(i for i, c in enumerate(commands) if c.startswith("INCR") and "work:version" in c)
    answered = next(i for i, c in enumerate(commands) if c.startswith("RPUSH") and ":reply:" in c)
    assert raised < answered, commands


@pytest.mark.integration
def test_a_retry_is_found_when_its_backoff_ends(scene, redis, migrated, worker) -> None:
    """No commit announces the end of a backoff: the marker of a poll that saw the retry waiting ends
    with it."""
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_retry", n=1, retry_policy={"max_attempts": 3, "backoff": "fixed", "backoff_seconds": 1})
    scene.start("plan_retry", "exec_retry")
    assert scene.poll("agent_a").status_code == 200
    before = int(redis.get(version_key(migrated.redis_key_prefix)) or 0)
    scene.report("agent_a", "exec_retry", "task_started", "s0")
    out = scene.report("agent_a", "exec_retry", "task_error", "s0", error_message="SMTP timeout")
    assert out["retry_scheduled"] is True
    _until(lambda: int(redis.get(version_key(migrated.redis_key_prefix)) or 0) > before)
    scene.idle("agent_b")  # answered from Redis while the backoff runs
    with scene.db.reading() as s:
        not_before = s.scalar(select(ExecutionSubtask.not_before).where(ExecutionSubtask.id == "exec_retry:s0"))
    time.sleep(max(0.0, (not_before - utcnow()).total_seconds()) + 0.05)
    work = scene.poll("agent_b")
    assert work.status_code == 200 and work.get_json()["next_task"]["attempt"] == 2


def test_a_claim_the_sweeper_puts_back_is_found(scene, redis, migrated) -> None:
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_one", n=1)
    scene.start("plan_one", "exec_one")
    assert scene.poll("agent_a").status_code == 200  # never acknowledged
    scene.idle("agent_b")
    later = utcnow() + timedelta(seconds=migrated.claim_ack_seconds + 1)
    assert release_overdue_work(scene.db, redis, migrated, later).expired == 1
    work = scene.poll("agent_b")
    assert work.status_code == 200 and work.get_json()["next_task"]["task_id"] == "s0"


def test_pause_and_cancel_reach_a_holder_whose_polls_found_nothing(scene) -> None:
    scene.agent("agent_a")
    scene.plan("plan_one", n=1)
    scene.start("plan_one", "exec_one")
    assert scene.poll("agent_a").status_code == 200
    scene.acknowledge("exec_one", "s0")
    scene.idle("agent_a")  # it holds s0, and there is nothing else
    scene.control("exec_one", "PAUSED")
    assert scene.poll("agent_a").get_json()["force_pause"] is True
    scene.control("exec_one", "RUNNING")
    scene.idle("agent_a")
    scene.control("exec_one", "CANCELLED")
    assert scene.poll("agent_a").get_json()["force_cancel"] is True


def test_a_resolved_block_is_found(scene) -> None:
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_one", n=1)
    scene.start("plan_one", "exec_one")
    assert scene.poll("agent_a").status_code == 200
    with scene.db.unit_of_work() as s:
        block_subtask(s, "exec_one", "s0")  # as the worker applies a blocking error
        # ...in an execution that goes on (its other tasks could): resolving moves no execution, and
        # must announce the retry itself.
        s.get(Execution, "exec_one").status = "RUNNING"
    scene.idle("agent_b")
    resp = scene.client.post("/api/executions/exec_one/tasks/task_0/resolve", headers=bearer(scene.token),
                             json={"option": "retry_task"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    work = scene.poll("agent_b")
    assert work.status_code == 200 and work.get_json()["next_task"]["attempt"] == 2


def test_an_execution_assigned_to_an_agent_reaches_it(scene) -> None:
    scene.agents("agent_a", "agent_b")
    scene.plan("plan_one", n=1)
    scene.idle("agent_a", "agent_b")
    scene.start("plan_one", "exec_mine", agent_id="agent_b")
    assert scene.poll("agent_a").status_code == 204
    assert scene.poll("agent_b").get_json()["execution_id"] == "exec_mine"


def test_a_claim_made_alongside_the_agents_idle_poll_is_answered_again(scene, redis, migrated) -> None:
    """Another poll of the same agent claimed while this one found nothing (a client that timed out
    and polled again): the claim raises the agent's counter, so its marker cannot hide the claim."""
    scene.agent("agent_a")
    scene.plan("plan_one", n=1)
    scene.idle("agent_a")
    with scene.db.unit_of_work() as s:  # queued without a word, then claimed as that other poll does
        create_execution(s, scene.owner.id, "plan_one", utcnow(), execution_id="exec_quiet").status = "QUEUED"
    claimed = scene.db.transaction(lambda s: claim_work(s, "agent_a", None, utcnow()))
    assert claimed.payload is not None
    carry_out(redis, migrated.redis_key_prefix, claimed.after)
    again = scene.poll("agent_a")
    assert again.status_code == 200 and again.get_json().get("redelivered") is True


def test_a_poll_that_finds_the_ready_work_held_looks_again_shortly(scene, db, migrated) -> None:
    if db.dialect != "postgresql":
        pytest.skip("on SQLite a claim waits for the write lock instead of passing over")
    scene.agent("agent_a")
    scene.plan("plan_one", n=1)
    scene.start("plan_one", "exec_one")
    engine, conn = hold_database_write_lock(migrated, "exec_one")  # as a claimer or the worker would
    try:
        assert scene.poll("agent_a").status_code == 204
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()
    time.sleep(0.1)  # past the short marker such a poll leaves
    assert scene.poll("agent_a").status_code == 200


def test_idle_polls_write_the_heartbeat_once_in_a_while(scene, redis, migrated) -> None:
    scene.agent("agent_a")
    assert scene.poll("agent_a").status_code == 204
    with scene.db.reading() as s:
        first = s.get(Agent, "agent_a").last_heartbeat
    assert first is not None
    redis.delete(idle_key(migrated.redis_key_prefix, "agent_a"))  # as when the marker has run out
    with statements() as sent:
        assert scene.poll("agent_a").status_code == 204  # it looked at the database again
    assert sent
    with scene.db.reading() as s:
        assert s.get(Agent, "agent_a").last_heartbeat == first  # but wrote nothing: too soon


def test_no_subtask_is_claimed_twice_by_concurrent_polls(db, live_server, redis, migrated) -> None:
    """Agents poll over real HTTP from threads while operators queue more work; every subtask goes to
    exactly one agent, and every agent that got work got it once."""
    scene = Scene(db, None)
    operator = requests.Session()
    operator.headers.update(bearer(scene.token))
    agents = [scene.agent(f"agent_crowd_{i}") for i in range(30)]
    scene.plan("plan_five", n=5)

    def start(execution_id: str) -> None:
        assert operator.post(live_server.url + "/api/executions",
                             json={"plan_id": "plan_five", "execution_id": execution_id}).status_code == 201
        assert operator.patch(live_server.url + f"/api/executions/{execution_id}",
                              json={"status": "QUEUED"}).status_code == 200

    for e in range(4):
        start(f"exec_crowd_{e}")
    claims: list[tuple[str, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def agents_of(part: list[str]) -> None:
        http = requests.Session()
        waiting = list(part)
        deadline = time.monotonic() + 60
        while waiting and time.monotonic() < deadline:
            for agent_id in list(waiting):
                resp = http.get(f"{live_server.url}/api/agents/{agent_id}/work", auth=scene.auths[agent_id],
                                timeout=30)
                if resp.status_code == 200:
                    work = resp.json()
                    with lock:
                        claims.append((work["execution_id"], work["next_task"]["task_id"]))
                    waiting.remove(agent_id)  # at work from now on: it stops polling
                elif resp.status_code != 204:
                    errors.append(f"{resp.status_code} {resp.text}")

    threads = [threading.Thread(target=agents_of, args=(agents[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for e in range(4, 6):  # more work while they poll
        time.sleep(0.2)
        start(f"exec_crowd_{e}")
    for t in threads:
        t.join(90)
    assert_each_claimed_once(claims, errors, 30)
    with db.reading() as s:
        held = s.execute(select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id,
                                ExecutionSubtask.agent_id).where(ExecutionSubtask.status == "RUNNING")).all()
    assert sorted((ex, sub) for ex, sub, _ in held) == sorted(claims)
    assert len({agent for *_, agent in held}) == 30


def _until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker did not get to it"
        time.sleep(0.02)
