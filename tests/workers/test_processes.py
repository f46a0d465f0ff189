"""A real `dramatiq workers` process on Redis: messages sent through the broker run inside the
app context (AppContext middleware) on the test database."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from datetime import timedelta

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import ROOT

TIMEOUT = 60


def worker_env(app, redis_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVOI_")}
    env.update(
        ENVOI_REDIS_URL=redis_url,
        ENVOI_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        ENVOI_INSTANCE_PATH=app.config["INSTANCE_PATH"],
        ENVOI_SECRET_KEY=app.config["SECRET_KEY"],
        ENVOI_DEFAULT_REGION=app.config["DEFAULT_REGION"],
    )
    return env  # ENVOI_BROKER is left out: the real Redis broker


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group (the worker and its children), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    try:  # children of a killed leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def worker(app, redis_url, venv_bin, tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv_bin / "dramatiq"), "workers", "--processes", "1", "--threads", "4"],
                                cwd=ROOT, env=worker_env(app, redis_url), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log = log
    yield proc
    stop_group(proc)
    assert proc.poll() is not None


@pytest.fixture
def redis_broker(redis_url):
    # Tests run on a StubBroker (conftest); this one talks to the Redis the worker reads.
    broker = RedisBroker(url=redis_url, middleware=[])
    yield broker
    broker.close()


def send(broker, actor_name: str, *args, queue: str = "default") -> dramatiq.Message:
    broker.declare_queue(queue)
    return broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor_name, args=args, kwargs={},
                                           options={}))


def wait_for(check, what: str, proc: subprocess.Popen, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"worker exited: {proc.log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; worker log:\n{proc.log.read_text()[-3000:]}")


def test_periodic_actor_runs_with_the_database(app, worker, redis_broker, tmp_path):
    """requeue_lost_imports (the scheduler's actor) finds a job whose worker died, sends it
    back to the imports queue, and the worker runs the import: every step needs the database."""
    from contacts.models import Contact, ImportJob
    from envoi.extensions import db
    from envoi.types import utcnow

    path = tmp_path / "people.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "first_name", "city"])
        writer.writerow(["ada@example.org", "Ada", "Lyon"])
        writer.writerow(["grace@example.org", "Grace", "Paris"])
    long_ago = utcnow() - timedelta(hours=7)
    with app.app_context():
        job = ImportJob(filename="people.csv", path=str(path), status="running", options={},
                        created_at=long_ago, started_at=long_ago)
        db.session.add(job)
        db.session.commit()
        job_id = job.id

    # Several at once, so the worker's threads build the app concurrently on first use.
    for _ in range(4):
        send(redis_broker, "requeue_lost_imports")

    def finished():
        with app.app_context():
            row = db.session.get(ImportJob, job_id)
            db.session.remove()
            return row if row.status in ("done", "failed") else None

    job = wait_for(finished, "the lost import to be requeued and run", worker)
    assert (job.status, job.error, job.rows, job.created) == ("done", None, 2, 2)
    with app.app_context():
        cities = db.session.scalars(sa.select(Contact.city).order_by(Contact.email)).all()
    assert cities == ["Lyon", "Paris"]
    log = worker.log.read_text()
    assert "Failed to process message" not in log, log

