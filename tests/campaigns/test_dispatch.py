"""Dispatch end to end on the StubBroker with a Dramatiq worker in-thread, a real SMTP server
(aiosmtpd) and the fake Twilio API: launch, send-time consent, pause/resume/cancel, retries,
bounces, auto-pause, quiet hours, relaunch, timeline, statements per batch."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa

from campaigns import dispatch
from campaigns.models import Campaign, Delivery
from contacts.models import Contact
from envoi.errors import Conflict, ValidationError
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import MessageEvent
from tests.campaigns.dispatch_fixtures import (_clean_campaign_keys, make_campaign, make_contacts,  # noqa: F401
                                               quiet_off, run_worker, stub_broker)
from tests.conftest import configured


def deliveries(campaign_id: int) -> dict[int, Delivery]:
    db.session.expire_all()
    return {d.contact_id: d for d in db.session.scalars(sa.select(Delivery).where(Delivery.campaign_id == campaign_id))}


def test_personalised_send_to_a_segment_logged_on_the_timeline(app, ctx, smtp_server, run_worker):
    from contacts.services import timeline, update_contact

    lyon = make_contacts(3)
    make_contacts(2, city="Paris", start=10)
    unsubscribed, erased = make_contacts(2, start=20)
    db.session.execute(sa.update(Contact).where(Contact.id == unsubscribed).values(email_status="unsubscribed"))
    db.session.execute(sa.update(Contact).where(Contact.id == erased).values(erased_at=utcnow()))
    db.session.commit()
    campaign_id = make_campaign()

    campaign = dispatch.launch(campaign_id)
    assert campaign.status == "sending" and campaign.targeted == 3
    run_worker()

    received = {m["to"][0]: m["message"] for m in smtp_server.messages}
    assert sorted(received) == [f"person{i}@example.org" for i in range(3)]
    for i in range(3):
        msg = received[f"person{i}@example.org"]
        assert msg["Subject"] == f"Bonjour Ada{i}"
        assert f"Bonjour Ada{i}, les soldes à Lyon." in msg.get_body(("plain",)).get_content()
    stats = dispatch.stats(campaign_id)
    assert {k: stats[k] for k in ("targeted", "sent", "failed", "bounced", "skipped", "queued", "status")} == {
        "targeted": 3, "sent": 3, "failed": 0, "bounced": 0, "skipped": 0, "queued": 0, "status": "sent"}
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).finished_at is not None
    events = db.session.execute(sa.select(MessageEvent.contact_id, MessageEvent.kind, MessageEvent.campaign_id)).all()
    assert sorted(events) == [(cid, "sent", campaign_id) for cid in lyon]

    items, _ = timeline(lyon[0], None, 20)
    (mailing,) = [i for i in items if i["type"] == "delivery"]
    assert mailing["campaign_id"] == campaign_id and mailing["campaign_name"] == "Soldes"
    assert (mailing["channel"], mailing["status"], mailing["error"]) == ("email", "sent", None)
    assert mailing["sent_at"] is not None
    update_contact(lyon[0], {"city": "Lyon"})  # the timeline keeps working next to other entries
    assert [i["type"] for i in timeline(lyon[0], None, 20)[0]].count("delivery") == 1


def test_who_unsubscribes_after_launch_gets_nothing(app, ctx, smtp_server, run_worker):
    ids = make_contacts(4)
    campaign_id = make_campaign()
    dispatch.launch(campaign_id)
    # Between the launch and the batch: one unsubscribes, one is erased (suppressed).
    from contacts.services import erase_contact

    db.session.execute(sa.update(Contact).where(Contact.id == ids[1]).values(email_status="unsubscribed"))
    db.session.commit()
    erase_contact(ids[2])
    run_worker()
    assert sorted(m["to"][0] for m in smtp_server.messages) == ["person0@example.org", "person3@example.org"]
    rows = deliveries(campaign_id)
    assert (rows[ids[1]].status, rows[ids[1]].error) == ("skipped", "email status is unsubscribed")
    assert rows[ids[2]].status == "skipped"
    stats = dispatch.stats(campaign_id)
    assert (stats["sent"], stats["skipped"], stats["status"]) == (2, 2, "sent")


def test_topic_audience_and_exclusions(app, ctx, smtp_server, run_worker):
    from contacts.models import ContactTopic
    from contacts.services import create_topic
    from segments.services import create_segment

    ids = make_contacts(4)
    topic = create_topic("news", "News")
    db.session.add_all([ContactTopic(contact_id=i, topic_id=topic.id, subscribed=True) for i in ids[:3]])
    db.session.commit()
    vip = create_segment("not these", {"field": "first_name", "op": "eq", "value": "Ada0"})
    campaign_id = make_campaign(topic_id=topic.id, exclude_segment_ids=[vip.id])
    assert dispatch.launch(campaign_id).targeted == 2  # Ada1, Ada2
    # Ada2 leaves the topic before the batch runs.
    db.session.execute(sa.update(ContactTopic).where(ContactTopic.contact_id == ids[2]).values(subscribed=False))
    db.session.commit()
    run_worker()
    assert [m["to"][0] for m in smtp_server.messages] == ["person1@example.org"]
    assert deliveries(campaign_id)[ids[2]].error == "unsubscribed from the topic"


def test_launch_refusals(app, ctx):
    make_contacts(1)
    campaign_id = make_campaign()
    db.session.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(segment_id=None))
    db.session.commit()
    with pytest.raises(ValidationError) as err:
        dispatch.launch(campaign_id)
    assert "segment_id" in err.value.fields
    other = make_campaign(name="Other")
    dispatch.cancel(dispatch.launch(other, at=utcnow() + timedelta(days=1)).id)
    for call in (dispatch.launch, dispatch.pause, dispatch.resume, dispatch.cancel):
        with pytest.raises(Conflict):
            call(other)


def test_pause_resume_cancel(app, ctx, smtp_server, run_worker):
    make_contacts(6)
    campaign_id = make_campaign()
    with configured(app, CAMPAIGN_BATCH_SIZE=2):
        dispatch.launch(campaign_id)
        dispatch.pause(campaign_id)
        run_worker()  # the batches find the campaign paused: they claim nothing
        assert smtp_server.messages == [] and dispatch.stats(campaign_id)["queued"] == 6
        assert dispatch.resume(campaign_id).status == "sending"
        run_worker()
    assert len(smtp_server.messages) == 6 and dispatch.stats(campaign_id)["status"] == "sent"

    other = make_campaign(name="Other")
    dispatch.launch(other)
    assert dispatch.cancel(other).status == "cancelled"
    run_worker()
    assert len(smtp_server.messages) == 6
    stats = dispatch.stats(other)
    assert (stats["queued"], stats["sent"], stats["status"]) == (6, 0, "cancelled")


def test_pause_takes_effect_mid_batch_and_resume_sends_the_rest_once(app, ctx, smtp_server):
    """A batch of 40 held at 20 messages/s: a pause after the first messages stops it at once;
    the rest goes back to the queue and resume sends it, each message exactly once."""
    make_contacts(40)
    campaign_id = make_campaign()
    with configured(app, CAMPAIGN_BATCH_SIZE=40, EMAIL_RATE_PER_SECOND=20):
        dispatch.launch(campaign_id)
        lo, hi = db.session.execute(sa.select(sa.func.min(Delivery.id), sa.func.max(Delivery.id))).one()

        def batch():
            with app.app_context():
                dispatch.deliver_batch(campaign_id, lo, hi)

        thread = threading.Thread(target=batch)
        thread.start()
        smtp_server.wait_for(3)
        dispatch.pause(campaign_id)
        thread.join(30)
        sent_before_resume = len(smtp_server.messages)
        stats = dispatch.stats(campaign_id)
        assert stats["status"] == "paused" and stats["sent"] == sent_before_resume < 40
        assert stats["queued"] == 40 - sent_before_resume and stats["sending"] == 0
        dispatch.resume(campaign_id)
        dispatch.deliver_batch(campaign_id, lo, hi)
    addresses = [m["to"][0] for m in smtp_server.messages]
    assert len(addresses) == len(set(addresses)) == 40
    assert dispatch.stats(campaign_id)["status"] == "sent"


def test_transient_sms_error_is_retried_then_sent(app, ctx, fake_twilio, quiet_off, run_worker):
    ids = make_contacts(2, channel="sms")
    campaign_id = make_campaign(channel="sms")
    fake_twilio.fail_next = [(503, 20503)]
    dispatch.launch(campaign_id)
    run_worker()
    assert sorted(m["To"] for m in fake_twilio.messages) == ["+33610000000", "+33610000001"]
    assert fake_twilio.requests == 3
    rows = deliveries(campaign_id)
    assert sorted(r.attempts for r in rows.values()) == [1, 2]
    assert all(r.status == "sent" and r.provider_id.startswith("SM") for r in rows.values())
    assert "Bonjour Ada0" in fake_twilio.messages[0]["Body"] or "Bonjour Ada1" in fake_twilio.messages[0]["Body"]
    assert dispatch.stats(campaign_id)["status"] == "sent" and ids


def test_transient_email_error_until_max_attempts_then_failed(app, ctx, smtp_server, quiet_off, run_worker):
    ids = make_contacts(2)
    smtp_server.refuse["person1@example.org"] = (451, "mailbox busy, try later")
    campaign_id = make_campaign()
    with configured(app, DELIVERY_MAX_ATTEMPTS=3):
        dispatch.launch(campaign_id)
        run_worker()
    rows = deliveries(campaign_id)
    assert (rows[ids[0]].status, rows[ids[0]].attempts) == ("sent", 1)
    failed = rows[ids[1]]
    assert (failed.status, failed.attempts, failed.error_code) == ("failed", 3, 451)
    assert "try later" in failed.error
    assert db.session.get(Contact, ids[1]).email_status == "confirmed"  # not a bounce
    stats = dispatch.stats(campaign_id)
    assert (stats["sent"], stats["failed"], stats["status"]) == (1, 1, "sent")


def test_hard_bounce_marks_the_contact_and_stops_email(app, ctx, smtp_server, run_worker):
    ids = make_contacts(3)
    smtp_server.refuse["person1@example.org"] = (550, "no such user")
    campaign_id = make_campaign()
    dispatch.launch(campaign_id)
    run_worker()
    bounced = deliveries(campaign_id)[ids[1]]
    assert (bounced.status, bounced.error_code, bounced.attempts) == ("bounced", 550, 1)
    assert "no such user" in bounced.error
    contact = db.session.get(Contact, ids[1])
    assert contact.email_status == "bounced" and contact.email_status_at is not None
    kinds = db.session.execute(sa.select(MessageEvent.contact_id, MessageEvent.kind)).all()
    assert (ids[1], "bounced") in kinds and (ids[1], "sent") not in kinds
    assert dispatch.stats(campaign_id)["bounced"] == 1
    # The next campaign does not target the address any more.
    assert dispatch.launch(make_campaign(name="Next")).targeted == 2


def test_sms_permanent_errors_update_the_contact(app, ctx, fake_twilio, quiet_off, run_worker):
    ids = make_contacts(3, channel="sms")
    fake_twilio.fail["+33610000000"] = (400, 21610)
    fake_twilio.fail["+33610000001"] = (400, 21211)
    campaign_id = make_campaign(channel="sms")
    dispatch.launch(campaign_id)
    run_worker()
    rows = deliveries(campaign_id)
    assert [(rows[i].status, rows[i].error_code) for i in ids] == [("failed", 21610), ("failed", 21211), ("sent", None)]
    assert [db.session.get(Contact, i).sms_status for i in ids] == ["unsubscribed", "invalid", "confirmed"]


def test_campaign_pauses_itself_on_its_error_rate(app, ctx, smtp_server, run_worker):
    make_contacts(40)
    for i in range(25):
        smtp_server.refuse[f"person{i}@example.org"] = (550, "no such user")
    campaign_id = make_campaign()
    with configured(app, CAMPAIGN_BATCH_SIZE=10, CAMPAIGN_PAUSE_ERROR_RATE=0.2):
        dispatch.launch(campaign_id)
        run_worker(threads=1)  # batches in order: the first two fail, the pause stops the rest
    stats = dispatch.stats(campaign_id)
    assert stats["status"] == "paused"
    assert stats["status_reason"].startswith("paused automatically: 20 of the last 20 messages failed")
    assert "no such user" in stats["status_reason"]
    assert (stats["bounced"], stats["sent"], stats["queued"]) == (20, 0, 20)


def test_quiet_hours_delay_sms_until_the_next_allowed_slot(app, ctx, fake_twilio, quiet_off, run_worker):
    ids = make_contacts(2, channel="sms", timezone="UTC")
    now = utcnow()
    window = f"{(now - timedelta(hours=1)):%H:%M}-{(now + timedelta(hours=1)):%H:%M}"
    campaign_id = make_campaign(channel="sms")
    with configured(app, SMS_QUIET_HOURS=(window[:5], window[6:])):
        dispatch.launch(campaign_id)
        run_worker()
    assert fake_twilio.messages == []
    rows = deliveries(campaign_id)
    for contact_id in ids:
        row = rows[contact_id]
        assert (row.status, row.attempts) == ("queued", 0)
        assert now + timedelta(minutes=50) < row.next_attempt_at <= now + timedelta(minutes=61)
    assert dispatch.stats(campaign_id)["status"] == "sending"
    # An hour later the slot is open (and the campaign's heartbeat in Redis long expired):
    # the scheduler's requeue finds the due rows.
    db.session.execute(sa.update(Delivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    redis.Redis.from_url(app.config["REDIS_URL"]).delete(f"envoi:campaign:{campaign_id}:alive")
    assert dispatch.requeue_due()["requeued"] >= 1
    run_worker()
    assert len(fake_twilio.messages) == 2 and dispatch.stats(campaign_id)["status"] == "sent"


def test_relaunch_is_idempotent(app, ctx, smtp_server, run_worker):
    make_contacts(3)
    campaign_id = make_campaign()
    dispatch.launch(campaign_id)
    run_worker()
    make_contacts(1, start=3)
    # As if the campaign were launched again (a retried request, an operator's mistake).
    db.session.execute(sa.update(Campaign).where(Campaign.id == campaign_id).values(status="draft"))
    db.session.commit()
    assert dispatch.launch(campaign_id).targeted == 4
    run_worker()
    addresses = sorted(m["to"][0] for m in smtp_server.messages)
    assert addresses == [f"person{i}@example.org" for i in range(4)]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 4


def test_scheduled_campaign_starts_when_due(app, ctx, smtp_server, run_worker):
    make_contacts(2)
    campaign_id = make_campaign()
    campaign = dispatch.launch(campaign_id, at=utcnow() + timedelta(hours=2))
    assert campaign.status == "scheduled"
    assert dispatch.requeue_due()["started"] == 0
    db.session.execute(sa.update(Campaign).values(send_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert dispatch.requeue_due()["started"] == 1
    run_worker()
    assert len(smtp_server.messages) == 2 and dispatch.stats(campaign_id)["status"] == "sent"


def test_a_lost_batch_is_requeued_and_an_expired_lease_reclaimed(app, ctx, smtp_server, stub_broker, run_worker):
    from campaigns.ratelimit import redis_client

    ids = make_contacts(4)
    campaign_id = make_campaign()
    dispatch.launch(campaign_id)
    stub_broker.flush_all()  # the broker lost the batch
    # And a worker died holding three rows (their lease expired): one it never reached, one it
    # was sending (marked 'a' in Redis), one the SMTP server had accepted (marked sent).
    rows = deliveries(campaign_id)
    held = [rows[c].id for c in ids[:3]]
    db.session.execute(sa.update(Delivery).where(Delivery.id.in_(held)).values(
        status="sending", attempts=1, lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    accepted_at = utcnow() - timedelta(seconds=30)
    redis_client().hset(dispatch._progress_key(campaign_id), mapping={
        held[1]: "a", held[2]: f"s {accepted_at.isoformat()} <queued-as-42@example.org>"})
    report = dispatch.requeue_due()
    assert report["reclaimed"] == 3 and report["requeued"] == 1
    run_worker()
    # The accepted one is not sent again; the other three leave once each.
    received = sorted(m["to"][0] for m in smtp_server.messages)
    assert received == sorted(f"person{i}@example.org" for i in (0, 1, 3))
    rows = deliveries(campaign_id)
    assert (rows[ids[2]].status, rows[ids[2]].provider_id) == ("sent", "<queued-as-42@example.org>")
    assert abs((rows[ids[2]].sent_at - accepted_at).total_seconds()) < 1
    assert [(rows[c].attempts, rows[c].reclaims) for c in ids[:2]] == [(1, 0), (2, 1)]
    stats = dispatch.stats(campaign_id)
    # Only the row whose send was under way at the crash may have gone twice.
    assert (stats["sent"], stats["duplicates_possible"], stats["status"]) == (4, 1, "sent")
    sent_events = db.session.scalars(sa.select(MessageEvent.contact_id).where(
        MessageEvent.campaign_id == campaign_id, MessageEvent.kind == "sent")).all()
    assert sorted(sent_events) == sorted(ids)


def test_statements_per_batch_do_not_grow_with_its_size(app, ctx, smtp_server):
    """One batch = a fixed number of SQL statements, whatever its size (bulk claim, re-check,
    executemany results, bulk events and contact statuses)."""
    counts = {}
    for size, start in ((5, 0), (60, 100)):
        make_contacts(size, start=start, city=f"City{size}")
        smtp_server.refuse[f"person{start}@example.org"] = (550, "no such user")
        campaign_id = make_campaign(name=f"Batch of {size}", rules={"field": "city", "op": "eq", "value": f"City{size}"})
        with configured(app, CAMPAIGN_BATCH_SIZE=size, CAMPAIGN_PAUSE_ERROR_RATE=1.0):
            dispatch.launch(campaign_id)
            lo, hi = db.session.execute(sa.select(sa.func.min(Delivery.id), sa.func.max(Delivery.id))
                                        .where(Delivery.campaign_id == campaign_id)).one()
            db.session.remove()
            statements = []

            def count(conn, cursor, statement, parameters, context, executemany):
                statements.append(statement.split(None, 1)[0])

            sa.event.listen(db.engine, "before_cursor_execute", count)
            try:
                outcome = dispatch.deliver_batch(campaign_id, lo, hi)
            finally:
                sa.event.remove(db.engine, "before_cursor_execute", count)
        assert outcome == {"sent": size - 1, "bounced": 1}
        counts[size] = statements
    assert len(counts[5]) == len(counts[60]) <= 12, counts


def test_a_batch_records_only_the_rows_it_still_holds(app, ctx, stub_broker):
    """The lease is a fencing token: results for a row another worker took over (new lease) or
    settled meanwhile are not written over it (one statement on PostgreSQL, executemany elsewhere)."""
    ids = make_contacts(4)
    campaign_id = make_campaign()
    dispatch.launch(campaign_id)
    rows = deliveries(campaign_id)
    mine, theirs = utcnow() + timedelta(seconds=60), utcnow() + timedelta(seconds=90)
    held = [rows[c].id for c in ids]
    sent_at = utcnow()
    db.session.execute(sa.update(Delivery).where(Delivery.id.in_(held[:2])).values(status="sending", lease_until=mine))
    db.session.execute(sa.update(Delivery).where(Delivery.id == held[2]).values(status="sending", lease_until=theirs))
    # Settled by the scheduler's reclaim meanwhile (sent, its lease cleared).
    db.session.execute(sa.update(Delivery).where(Delivery.id == held[3]).values(status="sent", lease_until=None,
                                                                                 provider_id="<kept>"))
    db.session.commit()
    results = [{"b_id": i, "b_lease": mine, "status": "sent", "attempts": 1, "sent_at": sent_at,
                "provider_id": f"<p{i}>", "error": None, "error_code": None, "next_attempt_at": None}
               for i in held]
    results[1].update(status="failed", sent_at=None, provider_id=None, error="SMTP 554 no", error_code=554)
    dispatch._record(campaign_id, "email", results, [], {})
    rows = deliveries(campaign_id)
    got = [(rows[c].status, rows[c].provider_id, rows[c].error_code, rows[c].lease_until is None) for c in ids]
    assert got == [("sent", f"<p{held[0]}>", None, True), ("failed", None, 554, True),
                   ("sending", None, None, False), ("sent", "<kept>", None, True)]
    assert abs((rows[ids[0]].sent_at - sent_at).total_seconds()) < 0.001


def test_a_configured_sms_rate_is_held_at_the_provider(app, ctx, fake_twilio, quiet_off, run_worker):
    """200 SMS through 8 worker threads and batches of 25 with SMS_RATE_PER_SECOND=100 on the real
    Redis, counted where they arrive (the fake Twilio's clock): they never go faster than the rate
    beyond the tenth of a second's burst the limiter allows. Load can only slow them down. (The
    limiter's own precision, by Redis time, is tests/campaigns/test_ratelimit.py's.)"""
    import time

    rate, count = 100, 200
    make_contacts(count, channel="sms")
    campaign_id = make_campaign(channel="sms")
    with configured(app, SMS_RATE_PER_SECOND=rate, CAMPAIGN_BATCH_SIZE=25):
        launched = time.time()
        dispatch.launch(campaign_id)
        run_worker(threads=8)
    assert len(fake_twilio.messages) == count and dispatch.stats(campaign_id)["sent"] == count
    burst = rate // 10
    # The first burst + 1 may leave at once, then one every 1/rate s: the last cannot arrive sooner.
    assert max(fake_twilio.times) - launched >= (count - 1 - burst) / rate
    # Per second of arrival, never more than twice the rate (a late grant arriving with the next ones).
    per_second: dict[int, int] = {}
    for t in fake_twilio.times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    assert max(per_second.values()) <= 2 * rate


def test_a_batchs_events_are_written_as_insert_events_writes_them(app, ctx, smtp_server):
    """A batch's 'sent' and 'bounced' events (one statement of arrays on PostgreSQL, insert_events
    elsewhere): every column as insert_events writes it."""
    from segments.models import insert_events

    ids = make_contacts(3)
    smtp_server.refuse["person1@example.org"] = (550, "no such user")
    campaign_id = make_campaign()
    with configured(app, CAMPAIGN_PAUSE_ERROR_RATE=1.0):
        dispatch.launch(campaign_id)
        lo, hi = db.session.execute(sa.select(sa.func.min(Delivery.id), sa.func.max(Delivery.id))
                                    .where(Delivery.campaign_id == campaign_id)).one()
        db.session.remove()
        assert dispatch.deliver_batch(campaign_id, lo, hi) == {"sent": 2, "bounced": 1}
    columns = (MessageEvent.contact_id, MessageEvent.campaign_id, MessageEvent.channel, MessageEvent.kind,
               MessageEvent.is_bot, MessageEvent.data)
    got = db.session.execute(sa.select(*columns, MessageEvent.occurred_at).order_by(MessageEvent.id)).all()
    assert [tuple(r[:6]) for r in got] == [(ids[0], campaign_id, "email", "sent", False, {}),
                                           (ids[1], campaign_id, "email", "bounced", False, {}),
                                           (ids[2], campaign_id, "email", "sent", False, {})]
    at = got[0].occurred_at
    assert at.tzinfo is not None and {r.occurred_at for r in got} == {at}
    # The same rows through insert_events, for comparison.
    insert_events(db.session.connection(), [{"contact_id": r[0], "campaign_id": r[1], "channel": r[2], "kind": r[3],
                                             "occurred_at": at, "is_bot": False, "data": {}} for r in got])
    db.session.commit()
    again = db.session.execute(sa.select(*columns, MessageEvent.occurred_at).order_by(MessageEvent.id)).all()
    assert [tuple(r) for r in again[3:]] == [tuple(r) for r in got]


def test_in_values_selects_what_in_selects(app, ctx):
    from envoi.types import in_values

    ids = make_contacts(5)
    dialect = db.session.get_bind().dialect.name
    for wanted in ([ids[1], ids[3]], [], [ids[0], 10**12]):
        fast = db.session.scalars(sa.select(Contact.id).where(in_values(Contact.id, wanted, dialect))).all()
        plain = db.session.scalars(sa.select(Contact.id).where(Contact.id.in_(wanted))).all()
        assert sorted(fast) == sorted(plain) == sorted(set(wanted) & set(ids))


def test_progress_marks_hold_one_connection_and_recover_from_a_lost_one(app, ctx):
    """A batch's marks go over one Redis connection; when Redis drops it, that message's mark
    fails (it would not be sent) and the next mark takes a fresh connection."""
    from campaigns.ratelimit import redis_client

    progress = dispatch._Progress(999_001)
    progress.begin(1)
    progress.confirm()
    held = progress._held
    progress.sent(1, utcnow(), "<m1>")
    progress.begin(2)
    progress.confirm()
    assert progress._held is held
    held.send_command("CLIENT", "ID")
    killed = held.read_response()
    redis_client().client_kill_filter(_id=killed)
    with pytest.raises((dispatch._MarkFailed, redis.ConnectionError)):
        progress.begin(3)
        progress.confirm()
    progress.begin(4)
    progress.confirm()
    progress._held.send_command("CLIENT", "ID")
    assert progress._held.read_response() != killed  # a new connection (the pool may reuse the object)
    marks = dispatch._read_progress(999_001, [1, 2, 3, 4])
    assert marks[1].startswith("s ") and marks[1].endswith(" <m1>") and marks[2] == marks[4] == "a" and 3 not in marks
    progress.clear()
    assert progress._held is None and dispatch._read_progress(999_001, [1, 2, 4]) == {}
    assert not redis_client().connection_pool._in_use_connections
