"""Fixtures of the automation tests: a Dramatiq worker in-thread on the StubBroker (queue
"automation"), a controllable clock passed as `now=` to the tick, helpers to read what was sent."""
from __future__ import annotations

from datetime import timedelta

import dramatiq
import pytest
import sqlalchemy as sa

from tests.campaigns.dispatch_fixtures import _clean_campaign_keys, stub_broker  # noqa: F401
from tests.conftest import configured


@pytest.fixture
def run_worker(stub_broker):  # noqa: F811
    """run_worker(): process every queued automation message, then stop."""

    def run(timeout: int = 120_000, threads: int = 4):
        worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=threads)
        worker.start()
        try:
            stub_broker.join("automation", fail_fast=True, timeout=timeout)
            worker.join()
        finally:
            worker.stop()

    return run


@pytest.fixture
def journey(ctx, run_worker):
    """journey(now): one scheduler tick at `now`, then the workers take the due steps."""
    from automation.engine import tick

    def step(now):
        report = tick(now)
        run_worker()
        return report

    return step


@pytest.fixture
def quiet_off(app):
    with configured(app, SMS_QUIET_HOURS=None, SMS_QUIET_DAYS=(), DELIVERY_RETRY_BASE_SECONDS=0):
        yield app


def outbox(channel: str = "email", to: str | None = None) -> list:
    from campaigns.models import OutboxMessage
    from envoi.extensions import db

    db.session.expire_all()
    q = sa.select(OutboxMessage).where(OutboxMessage.channel == channel).order_by(OutboxMessage.id)
    if to is not None:
        q = q.where(OutboxMessage.to == to)
    return list(db.session.scalars(q))


def journey_deliveries(contact_id: int | None = None) -> list:
    from campaigns.models import Delivery
    from envoi.extensions import db

    db.session.expire_all()
    q = sa.select(Delivery).where(Delivery.journey_run_id.isnot(None)).order_by(Delivery.id)
    if contact_id is not None:
        q = q.where(Delivery.contact_id == contact_id)
    return list(db.session.scalars(q))


def later(now, **delta):
    return now + timedelta(**delta)
