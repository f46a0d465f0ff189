"""The report's rollups (PostgreSQL triggers on message_events) equal what the events say, whoever
writes, deletes or rewrites the events: drains (a re-drain of a batch already written too), bot and
prefetch opens, an erased contact (its events lose their URL), a deleted contact (its events go).
The report over all time (rollups on PostgreSQL) is compared with the same report over a range that
holds everything (computed from the events on every backend)."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from campaigns import tracking
from campaigns.models import Campaign
from campaigns.reports import campaign_report, rebuild_rollups
from campaigns.tracking_models import TrackingCampaignCount, TrackingContactCount, TrackingLink
from contacts.models import Contact
from contacts.services import erase_contact
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import MessageEvent
from tests.campaigns.dispatch_fixtures import make_campaign, make_contacts
from tests.tracking.test_buffer import AGENTS

EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
E = MessageEvent.__table__


def hits(client, rng, campaign_id, contact_ids, n, sent):
    for _ in range(n):
        contact_id = rng.choice(contact_ids)
        ua, ip, _ = rng.choice(AGENTS)
        if rng.random() < 0.55:
            token = tracking.open_token(campaign_id, contact_id, now=sent)
            client.get(f"/t/o/{token}.gif", headers={"User-Agent": ua}, environ_base={"REMOTE_ADDR": ip})
        else:
            url = f"https://shop.example.com/p/{rng.randint(1, 4)}"
            token = tracking.click_token(campaign_id, contact_id, url, now=sent)
            assert client.get(f"/t/c/{token}", headers={"User-Agent": ua},
                              environ_base={"REMOTE_ADDR": ip}).status_code == 302


def assert_exact(campaign_ids):
    db.session.expire_all()
    for campaign_id in campaign_ids:
        rolled, counted = campaign_report(campaign_id), campaign_report(campaign_id, *EVER)
        db.session.rollback()
        for report in (rolled, counted):
            del report["from"], report["to"]
        assert rolled == counted
    if db.session.get_bind().dialect.name != "postgresql":
        return  # no triggers: the tables stay empty and the report reads the events
    human, bot = E.c.is_bot.is_(sa.false()), E.c.is_bot.is_(sa.true())
    opened, clicked = E.c.kind == "opened", E.c.kind == "clicked"
    c = TrackingCampaignCount
    assert set(db.session.execute(sa.select(
        c.campaign_id, c.unique_opens, c.unique_clicks, c.opens, c.clicks, c.bot_opens, c.bot_clicks)).all()) == set(
        db.session.execute(sa.select(
            E.c.campaign_id, sa.func.count(sa.distinct(E.c.contact_id)).filter(human),
            sa.func.count(sa.distinct(E.c.contact_id)).filter(human, clicked),
            sa.func.count().filter(human, opened), sa.func.count().filter(human, clicked),
            sa.func.count().filter(bot, opened), sa.func.count().filter(bot, clicked))
            .where(E.c.kind.in_(("opened", "clicked"))).group_by(E.c.campaign_id)).all())
    k = TrackingContactCount
    assert set(db.session.execute(sa.select(k.campaign_id, k.contact_id, k.opens, k.clicks)
                                  .where(sa.or_(k.opens != 0, k.clicks != 0))).all()) == set(
        db.session.execute(sa.select(E.c.campaign_id, E.c.contact_id, sa.func.count().filter(opened),
                                     sa.func.count().filter(clicked))
                           .where(human, E.c.kind.in_(("opened", "clicked")))
                           .group_by(E.c.campaign_id, E.c.contact_id)).all())
    url = E.c.data["url"].as_string()
    assert set(db.session.execute(sa.select(TrackingLink.campaign_id, TrackingLink.url, TrackingLink.clicks,
                                            TrackingLink.unique_clicks).where(TrackingLink.clicks != 0)).all()) == set(
        db.session.execute(sa.select(E.c.campaign_id, url, sa.func.count(), sa.func.count(sa.distinct(E.c.contact_id)))
                           .where(human, clicked).group_by(E.c.campaign_id, url)).all())


def test_rollups_equal_the_events_through_drains_erasure_and_deletion(app, ctx, client):
    rng = random.Random(12)
    ids = make_contacts(9)
    a, b = make_campaign(name="A"), make_campaign(name="B")
    sent = utcnow() - timedelta(hours=60)
    # A started 60 hours ago (hour and day buckets); B not started yet when its events are written.
    db.session.execute(sa.update(Campaign).where(Campaign.id == a).values(started_at=sent, status="sent"))
    db.session.commit()
    hits(client, rng, a, ids, 250, sent)
    hits(client, rng, b, ids[:5], 60, sent)
    # Some events from far back, some hours and days after the sending, a few before it.
    tracking.drain_hits(batch=41)
    for minutes in (-30, 5, 61, 60 * 47, 60 * 49, 60 * 59):
        db.session.execute(sa.update(MessageEvent).where(MessageEvent.id.in_(
            sa.select(MessageEvent.id).where(MessageEvent.campaign_id == a).order_by(MessageEvent.id)
            .offset(rng.randint(0, 200)).limit(7).scalar_subquery())).values(occurred_at=sent + timedelta(minutes=minutes)))
    db.session.commit()
    opens = db.session.scalar(sa.select(sa.func.count()).where(E.c.kind == "opened", E.c.is_bot.is_(sa.true())))
    assert opens > 20  # prefetch and proxy opens are there, and must stay out of the human figures
    assert_exact([a, b])
    assert campaign_report(a)["unique_opens"] > 0 and campaign_report(a)["timeline"]

    # A batch written by a drainer that died before dropping its key: the next drain does not write it again.
    hits(client, rng, a, ids, 40, sent)
    tracking.flush_hits()
    key = tracking.take_batch()
    rows = [tracking.json.loads(raw) for raw in tracking._redis().lrange(key, 0, -1)]
    assert tracking._apply_rows(rows, batch=key.rsplit(":", 1)[-1]) is True
    assert tracking.drain_hits() == 40
    assert_exact([a, b])

    # B starts now: its earlier events were rolled up without an origin (the report reads them instead).
    db.session.execute(sa.update(Campaign).where(Campaign.id == b).values(started_at=utcnow(), status="sending"))
    db.session.commit()
    hits(client, rng, b, ids, 30, sent)
    tracking.drain_hits()
    assert_exact([a, b])

    erase_contact(ids[0])                      # its events keep their kind and time, lose their URL
    db.session.execute(sa.delete(Contact).where(Contact.id == ids[1]))  # its events go (ON DELETE CASCADE)
    db.session.commit()
    assert_exact([a, b])
    assert any(link["url"] is None for link in campaign_report(a)["top_links"])
    if db.session.get_bind().dialect.name == "postgresql":  # computed afresh: the same rows
        rebuild_rollups(db.session.connection())
        db.session.commit()
        assert_exact([a, b])
