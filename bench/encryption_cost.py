"""What encrypting personal data at rest costs the worker's hot path, in microseconds per event.

    python bench/encryption_cost.py [--repeat 9] [--batch 500] [--subtasks 500]

On SQLite files in a temporary folder (two databases: a token is readable only by the keyring that wrote it).

Three measures, each against a baseline measured in the same run:

1. fields: binding one agent event's stored fields (message, output_data, error_message, suggestions,
   outcome) through the encrypted column types, against the same types with a keyring that does not
   encrypt (serialisation only). Median over --repeat rounds of --events events.
2. apply_batch: `apply_batch` + commit of batches of --batch heartbeat events (each stores a message,
   output_data and its outcome), with the real keyring and with the non-encrypting one, alternately,
   each on a database of its own written with its keyring.
3. a large execution: a batch of one event on an execution of --subtasks subtasks, all but one
   finished with a result (what the worker would decrypt if it read them), same two keyrings.

Prints medians, the difference per event and the ratio. Not a wrk bench: there is no HTTP in this path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.encryption import EncryptedJSON, EncryptedText, Keyring, use_keyring  # noqa: E402
from orchestrator.events.apply import apply_batch  # noqa: E402
from orchestrator.events.protocol import Envelope  # noqa: E402
from orchestrator.execution_graph import complete_subtask, load_graphs, start_subtask  # noqa: E402
from orchestrator.executions import create_execution  # noqa: E402
from orchestrator.ids import event_id  # noqa: E402
from orchestrator.models import Agent, Plan, PlanSubtask, PlanTask, User, utcnow  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

MESSAGE = "Email sent to carol@bittersweet-farm.com and response received. Ready for next step."
OUTPUT = {"email_sent_to": "carol@bittersweet-farm.com", "email_timestamp": "2026-02-11T16:09:45Z",
          "recipient_response_received": True, "response_excerpt": "Sounds good, let's schedule for Thursday at 2 PM",
          "response_timestamp": "2026-02-11T16:45:00Z", "mailbox_used": "82deutschmark@gmail.com"}
OUTCOME = {"event_id": "evt_01JKZ5T9X3Q7", "execution_id": "exec_carol_prospect_20260211_001",
           "agent_id": "agent_larry_001", "recorded_at": "2026-02-11T16:09:46.123Z", "applied": True,
           "status": "RUNNING", "next_task_id": "task_1_1_b", "next_action": "document_requirements",
           "status_message": "Recorded. Next: Document requirements"}


class PlainKeyring(Keyring):
    """The baseline: the same path with no encryption (the value's bytes stored as they are)."""

    def encrypt(self, data: bytes) -> str:
        return data.decode()

    def decrypt(self, token: str) -> bytes:
        return token.encode()


def _fields_us(keyring: Keyring, events: int) -> float:
    dialect = SimpleNamespace(orchestrator_keyring=keyring)
    text, js = EncryptedText(), EncryptedJSON()
    start = time.perf_counter()
    for _ in range(events):
        text.process_bind_param(MESSAGE, dialect)
        js.process_bind_param(OUTPUT, dialect)
        text.process_bind_param(None, dialect)  # error_message
        js.process_bind_param(None, dialect)  # suggestions
        js.process_bind_param(OUTCOME, dialect)
    return (time.perf_counter() - start) / events * 1e6


def _scene(db: Database, n_subtasks: int) -> tuple[str, str]:
    """An execution whose last subtask the agent holds, every other one finished with a result."""
    with db.unit_of_work() as s:
        s.add(User(id="user_bench", username="bench"))
        s.add(Agent(id="agent_bench", name="bench"))
        s.flush()  # no relationship orders these inserts before the plan's
        plan = Plan(id="plan_bench", goal="bench", owner_id="user_bench", context={"owner": "carol@x.com"})
        task = PlanTask(id="task_1", title="T")
        for i in range(n_subtasks):
            task.subtasks.append(PlanSubtask(plan_id="plan_bench", id=f"sub_{i}", title="S", action="send_email",
                                             params={"to": "carol@bittersweet-farm.com"}, position=i))
        plan.tasks.append(task)
        s.add(plan)
        s.flush()
        ex = create_execution(s, "user_bench", "plan_bench", utcnow(), execution_id="exec_bench")
        ex.status = "RUNNING"
        g = load_graphs(s, [ex.id])[ex.id]
        for i in range(n_subtasks):
            start_subtask(g, g.subtasks[f"sub_{i}"], "agent_bench", utcnow())
            if i < n_subtasks - 1:
                complete_subtask(g, g.subtasks[f"sub_{i}"], OUTPUT, utcnow())
    return "exec_bench", f"sub_{n_subtasks - 1}"


def _apply_us(db: Database, scene: tuple[str, str], batch: int) -> float:
    execution_id, held = scene
    envelopes = [Envelope(event_id(), execution_id, "agent_bench", utcnow(),
                          {"event_type": "heartbeat", "task_id": held, "message": MESSAGE, "output_data": OUTPUT})
                 for _ in range(batch)]
    start = time.perf_counter()
    with db.unit_of_work() as s:
        apply_batch(s, envelopes, utcnow())
    return (time.perf_counter() - start) / batch * 1e6


def _databases(settings: Settings, tmp: str, name: str, keyrings: dict[str, Keyring],
               n_subtasks: int) -> dict[str, tuple[Database, tuple[str, str]]]:
    """One database per keyring, each written with it (a token is readable only by its own kind)."""
    out = {}
    for kind, keyring in keyrings.items():
        url = f"sqlite:///{tmp}/{name}-{kind}.db"
        migrations.upgrade(url, keyring=keyrings["encrypted"])
        db = Database(settings.replace(database_url=url))
        use_keyring(db.engine, keyring)  # the writer's engine: all that the scene and apply_batch use
        out[kind] = (db, _scene(db, n_subtasks))
    return out


def _report(name: str, real: list[float], plain: list[float]) -> None:
    r, p = statistics.median(real), statistics.median(plain)
    print(f"{name}: encrypted {r:.1f} µs/event, baseline {p:.1f} µs/event, "
          f"cost {r - p:.1f} µs/event, ratio {r / p:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--subtasks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-enc-") as tmp:
        settings = Settings.from_env({"ORCHESTRATOR_DATA_DIR": tmp, "SECRET_KEY": "bench"})
        real = Keyring.from_settings(settings)
        plain = PlainKeyring(settings.encryption_keys)
        real_f, plain_f = [], []
        for _ in range(args.repeat):
            real_f.append(_fields_us(real, args.events))
            plain_f.append(_fields_us(plain, args.events))
        _report("fields of one event", real_f, plain_f)

        keyrings = {"encrypted": real, "plain": plain}
        for label, batch, n_subtasks in ((f"apply_batch of {args.batch} events", args.batch, 2),
                                         (f"1-event batch on {args.subtasks} finished subtasks", 1, args.subtasks)):
            dbs = _databases(settings, tmp, f"s{n_subtasks}", keyrings, n_subtasks)
            times: dict[str, list[float]] = {"encrypted": [], "plain": []}
            try:
                for _ in range(args.repeat):
                    for kind, (db, scene) in dbs.items():
                        times[kind].append(_apply_us(db, scene, batch))
            finally:
                for db, _ in dbs.values():
                    db.dispose()
            _report(label, times["encrypted"], times["plain"])


if __name__ == "__main__":
    main()
