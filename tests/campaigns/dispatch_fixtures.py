"""Fixtures and factories of the dispatch tests (imported by test_dispatch.py and its siblings): a
Dramatiq worker in-thread on the StubBroker, contacts and campaigns made through the models,
Redis keys of campaigns cleared between tests."""
from __future__ import annotations

import dramatiq
import pytest
import redis

from tests.conftest import configured


@pytest.fixture(autouse=True)
def _clean_campaign_keys(redis_url):
    # Campaign ids restart at 1 in every test: their flags in Redis must not leak.
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("envoi:campaign:*"):
        client.delete(key)
    for key in client.scan_iter("envoi:rate:*"):
        client.delete(key)
    yield


@pytest.fixture
def stub_broker(app):
    from workers import broker
    from workers.broker import app_context_middleware

    app_context_middleware(broker)._app = app
    broker.flush_all()
    yield broker
    broker.flush_all()


@pytest.fixture
def run_worker(stub_broker):
    """run_worker(): process every queued campaign message (and those they enqueue), then stop."""

    def run(timeout: int = 30_000, threads: int = 8):
        worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=threads)
        worker.start()
        try:
            stub_broker.join("campaigns", fail_fast=True, timeout=timeout)
            worker.join()
        finally:
            worker.stop()

    return run


@pytest.fixture
def quiet_off(app):
    with configured(app, SMS_QUIET_HOURS=None, SMS_QUIET_DAYS=(), DELIVERY_RETRY_BASE_SECONDS=0):
        yield app


def make_contacts(n: int, *, channel: str = "email", city: str = "Lyon", start: int = 0, **fields) -> list[int]:
    from contacts.models import Contact
    from envoi.extensions import db
    from envoi.types import utcnow

    now = utcnow()
    rows = []
    for i in range(start, start + n):
        values = {"first_name": f"Ada{i}", "city": city, "created_at": now, "updated_at": now, **fields}
        if channel == "email":
            values.update(email=f"person{i}@example.org", email_status="confirmed", email_status_at=now)
        else:
            values.update(phone=f"+3361{i:07d}", sms_status="confirmed", sms_status_at=now)
            values.setdefault("timezone", "Europe/Paris")
        rows.append(Contact(**values))
    db.session.add_all(rows)
    db.session.commit()
    return [c.id for c in rows]


def make_campaign(*, channel: str = "email", rules=None, name: str = "Soldes", **fields) -> int:
    from campaigns.models import Campaign
    from envoi.extensions import db
    from segments.services import create_segment

    segment = create_segment(f"{name} audience", rules or {"field": "city", "op": "eq", "value": "Lyon"})
    values = {"name": name, "channel": channel, "segment_id": segment.id, "exclude_segment_ids": []}
    if channel == "email":
        values.update(subject="Bonjour {{ contact.first_name }}",
                      html="<p>Bonjour {{ contact.first_name | default('client') }}, les soldes à {{ contact.city }}.</p>",
                      text="Bonjour {{ contact.first_name | default('client') }}, les soldes à {{ contact.city }}.")
    else:
        values.update(body="Bonjour {{ contact.first_name }}, -20% ce week-end.")
    values.update(fields)
    campaign = Campaign(**values)
    db.session.add(campaign)
    db.session.commit()
    return campaign.id
