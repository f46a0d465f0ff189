"""Restart safety: a two-step journey (email, wait a day, email) for 10,000 contacts. The workers
are stopped in the middle of each step, their queued messages lost, one batch of runs left claimed
by a worker that died; the scheduler's tick and new workers start later. Every contact gets each
message exactly once: counted at the dev outbox and in the deliveries."""
from __future__ import annotations

import time
from collections import Counter

import dramatiq
import sqlalchemy as sa

from automation import engine, services
from automation.models import JourneyRun
from campaigns.models import Delivery, OutboxMessage
from contacts.models import Contact
from envoi.extensions import db
from envoi.types import utcnow
from tests.automation.conftest import later
from tests.conftest import configured

CONTACTS = 10_000
BATCH = 100


def _sent() -> int:
    db.session.remove()
    return db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage))


def _start(broker):
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=4)
    worker.start()
    return worker


def _run_until(broker, count: int, deadline: float) -> None:
    """Workers run until `count` messages went out, then stop; what is left in the queue is lost."""
    worker = _start(broker)
    try:
        while _sent() < count:
            assert time.monotonic() < deadline, "workers did not get that far"
            time.sleep(0.05)
    finally:
        worker.stop()
    broker.flush_all()  # the queue is lost with the workers


def _pending(at) -> int:
    """Runs the database says are due at `at` (claimed or not)."""
    db.session.remove()
    return db.session.scalar(sa.select(sa.func.count()).where(
        JourneyRun.status == "active", JourneyRun.next_step_at <= at))


def _drain(broker, at, deadline: float) -> None:
    """Workers run until no run is due at `at` any more (or nothing queued can make progress)."""
    worker = _start(broker)
    try:
        while _pending(at) and any(q.unfinished_tasks for q in broker.queues.values()):
            assert time.monotonic() < deadline, f"not drained: {_pending(at)} due"
            time.sleep(0.1)
        time.sleep(0.2)
    finally:
        worker.stop()
    broker.flush_all()


def test_workers_and_scheduler_stopped_mid_journey_every_due_step_happens_exactly_once(app, ctx, stub_broker):
    started = time.monotonic()
    deadline = started + 600
    now = utcnow()
    db.session.execute(sa.insert(Contact.__table__), [
        {"email": f"r{i}@example.org", "first_name": f"P{i}", "email_status": "confirmed", "email_status_at": now,
         "lifecycle": "prospect", "tags": ["launch"], "attributes": {}, "created_at": now, "updated_at": now,
         "purchase_count": 0, "purchase_total": 0} for i in range(CONTACTS)])
    db.session.commit()
    automation = services.create_automation({
        "name": "Lancement", "trigger": {"type": "tag", "tag": "launch"},
        "steps": [{"kind": "email", "subject": "Premier", "text": "Bonjour {{ contact.first_name }}"},
                  {"kind": "wait", "days": 1},
                  {"kind": "email", "subject": "Second", "text": "Encore bonjour {{ contact.first_name }}"}]})
    automation_id = automation.id
    services.enable(automation_id, now=now)
    t0 = now
    with configured(app, AUTOMATION_BATCH_SIZE=BATCH):
        # First step: the workers stop a third of the way, and one batch stays claimed by a dead worker.
        assert engine.tick(t0)["enrolled"] == CONTACTS
        _run_until(stub_broker, CONTACTS // 3, deadline)
        print(f"first stop: {time.monotonic() - started:.1f} s")
        lo, hi = db.session.execute(sa.select(sa.func.min(JourneyRun.id), sa.func.max(JourneyRun.id)).where(
            JourneyRun.step == 0)).one()
        dead = engine._claim(lo, hi, later(t0, minutes=1), later(t0, minutes=6))
        db.session.commit()
        assert len(dead) == BATCH
        first_stop = _sent()
        assert CONTACTS // 3 <= first_stop < CONTACTS

        # Later, the scheduler starts again: a tick soon after enqueues nothing lost yet ...
        assert engine.tick(later(t0, minutes=2))["enqueued"] == 0
        # ... one past REQUEUE_AFTER re-enqueues what the lost queue held, and past the dead
        # worker's lease, its runs too.
        assert engine.tick(later(t0, minutes=7))["enqueued"] > 0
        _drain(stub_broker, later(t0, minutes=7), deadline)
        print(f"step 1 done: {time.monotonic() - started:.1f} s")
        assert _sent() == CONTACTS

        # Second step, a day later: the same again.
        t1 = later(t0, days=1, minutes=10)
        assert engine.tick(t1)["enqueued"] > 0
        _run_until(stub_broker, CONTACTS + CONTACTS // 2, deadline)
        assert engine.tick(later(t1, minutes=1))["enqueued"] == 0  # enqueued lately: not yet lost
        assert _sent() < 2 * CONTACTS
        assert engine.tick(later(t1, minutes=6))["enqueued"] > 0
        _drain(stub_broker, later(t1, minutes=6), deadline)
        assert engine.tick(later(t1, minutes=12))["enqueued"] == 0  # a rerun finds nothing left to do

    db.session.remove()
    per_address = Counter(db.session.execute(sa.select(OutboxMessage.to, OutboxMessage.subject)).all())
    assert len(per_address) == 2 * CONTACTS
    assert set(per_address.values()) == {1}  # each contact: "Premier" once, "Second" once
    deliveries = db.session.execute(sa.select(Delivery.journey_step, Delivery.status, sa.func.count()).group_by(
        Delivery.journey_step, Delivery.status)).all()
    assert sorted(deliveries) == [(0, "sent", CONTACTS), (2, "sent", CONTACTS)]
    runs = db.session.execute(sa.select(JourneyRun.status, sa.func.count()).group_by(JourneyRun.status)).all()
    assert runs == [("done", CONTACTS)]
    stats = services.stats(automation_id)
    assert [(s["entered"], s["sent"]) for s in stats["steps"]] == [(CONTACTS, CONTACTS), (CONTACTS, 0),
                                                                    (CONTACTS, CONTACTS)]
    print(f"first stop at {first_stop}, {time.monotonic() - started:.1f} s")
