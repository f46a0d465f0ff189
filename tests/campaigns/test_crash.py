"""Crash safety with real `dramatiq workers` processes on Redis and the test database: SIGKILL one
worker mid-campaign, start another, run the requeue, and count at the SMTP server: everyone got
the message, and no more duplicates than the messages that were in flight at the kill."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import time
from collections import Counter

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker

from campaigns import dispatch
from campaigns.models import Campaign, Delivery
from contacts.models import Contact
from envoi.extensions import db
from envoi.types import utcnow
from tests.campaigns.dispatch_fixtures import _clean_campaign_keys, make_campaign, stub_broker  # noqa: F401
from tests.conftest import ROOT, configured
from tests.workers.test_processes import stop_group, worker_env

RECIPIENTS = 1500
BATCH = 50
THREADS = 2
DEADLINE = 150  # seconds for the whole test (a bound against hanging on a loaded machine, not a timing)


@pytest.fixture
def redis_broker(redis_url):
    broker = RedisBroker(url=redis_url, middleware=[])
    broker.declare_queue("campaigns")
    yield broker
    broker.flush_all()
    broker.close()


def forward(stub, redis_broker) -> int:
    """Messages our code enqueued in this process (StubBroker) go to the Redis the workers read."""
    moved = 0
    for name in ("campaigns", "campaigns.DQ"):
        q = stub.queues.get(name)
        while q is not None:
            try:
                data = q.get_nowait()
            except queue.Empty:
                break
            q.task_done()
            message = dramatiq.Message.decode(data)
            redis_broker.enqueue(dramatiq.Message(queue_name="campaigns", actor_name=message.actor_name,
                                                  args=message.args, kwargs={}, options={}))
            moved += 1
    return moved


def start_worker(app, redis_url, smtp_url, venv_bin, log_path):
    env = worker_env(app, redis_url)
    env.update(ENVOI_SMTP_URL=smtp_url, ENVOI_CAMPAIGN_BATCH_SIZE=str(BATCH), ENVOI_DELIVERY_LEASE_SECONDS="5",
               ENVOI_EMAIL_RATE_PER_SECOND="400", ENVOI_CAMPAIGN_PAUSE_ERROR_RATE="1")
    out = open(log_path, "ab")
    proc = subprocess.Popen([str(venv_bin / "dramatiq"), "workers", "--processes", "1", "--threads", str(THREADS)],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    out.close()
    proc.log = log_path
    return proc


def test_sigkill_mid_campaign_loses_nothing_and_duplicates_at_most_the_in_flight(
        app, redis_url, smtp_server, venv_bin, tmp_path, stub_broker, redis_broker):
    started = time.monotonic()
    with app.app_context():
        now = utcnow()
        db.session.execute(sa.insert(Contact.__table__), [
            {"email": f"crash{i}@example.org", "first_name": f"P{i}", "city": "Lyon", "email_status": "confirmed",
             "email_status_at": now, "lifecycle": "prospect", "tags": [], "attributes": {}, "created_at": now,
             "updated_at": now, "purchase_count": 0, "purchase_total": 0} for i in range(RECIPIENTS)])
        db.session.commit()
        campaign_id = make_campaign()

    first = start_worker(app, redis_url, smtp_server.url, venv_bin, tmp_path / "first.log")
    second = None
    try:
        with app.app_context(), configured(app, CAMPAIGN_BATCH_SIZE=BATCH):
            dispatch.launch(campaign_id)
        assert forward(stub_broker, redis_broker) == RECIPIENTS // BATCH
        # Kill the worker once it is well into the campaign.
        while len(smtp_server.messages) < RECIPIENTS // 4:
            assert first.poll() is None, first.log.read_text()[-3000:]
            assert time.monotonic() - started < 90, "the worker did not start sending"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(5)
        received_at_kill = len(smtp_server.messages)
        with app.app_context():
            in_flight = db.session.scalar(sa.select(sa.func.count()).where(
                Delivery.campaign_id == campaign_id, Delivery.status == "sending"))
        assert 0 < received_at_kill < RECIPIENTS

        # A new worker; once the dead worker's leases (5 s) expire, the scheduler's requeue
        # puts its rows back and re-enqueues what the broker lost with it.
        second = start_worker(app, redis_url, smtp_server.url, venv_bin, tmp_path / "second.log")
        time.sleep(5.5)
        with app.app_context(), configured(app, CAMPAIGN_BATCH_SIZE=BATCH):
            report = dispatch.requeue_due(force=True)
        forward(stub_broker, redis_broker)
        assert report["reclaimed"] == in_flight

        def finished():
            with app.app_context():
                pending = db.session.scalar(sa.select(sa.func.count()).where(
                    Delivery.campaign_id == campaign_id, Delivery.status.in_(("queued", "sending"))))
                # The last batch records its rows, then marks the campaign sent: wait for both.
                status = db.session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id))
                db.session.remove()
            return pending == 0 and status != "sending"

        while not finished():
            assert second.poll() is None, second.log.read_text()[-3000:]
            assert time.monotonic() - started < DEADLINE, f"not finished; log:\n{second.log.read_text()[-3000:]}"
            time.sleep(0.2)
        with app.app_context():
            stats = dispatch.stats(campaign_id)
    finally:
        stop_group(first)
        if second is not None:
            stop_group(second)

    per_address = Counter(m["to"][0] for m in smtp_server.messages)
    duplicates = sum(n - 1 for n in per_address.values())
    print(f"received at kill {received_at_kill}, rows in flight {in_flight}, duplicates {duplicates}, "
          f"stats {stats}, {time.monotonic() - started:.1f} s")
    assert len(per_address) == RECIPIENTS  # every recipient got the message
    assert stats["sent"] == RECIPIENTS and stats["status"] == "sent"
    # At most the message each of the dead worker's threads was sending went twice, and stats
    # say so; the rest of the rows it held were settled from their progress marks.
    assert duplicates <= stats["duplicates_possible"] <= THREADS
    assert in_flight <= BATCH * THREADS
    assert "Traceback" not in second.log.read_text()
