"""Campaign dispatch: launch, the batch sender, pause/resume/cancel, crash recovery, stats.

The database is the source of truth. Launching writes one `deliveries` row per recipient with
one INSERT ... SELECT, then enqueues batch messages (ranges of delivery ids). A batch claims its
rows with a lease (status 'sending', lease_until), re-checks consent at send time, sends, and
records every result of the batch in bulk in one transaction. Between those writes, each
message's progress is kept in Redis (a hash per campaign: 'a' before the SMTP/Twilio call, the
sent time and provider id once it is accepted; a message is never sent without its 'a').
A worker killed mid-batch leaves its rows 'sending'; once the lease expires `requeue_due` reads
those marks: a row marked sent is recorded as sent (not sent again), a row marked 'a' goes back
to the queue counted in `reclaims` (it may have left before the crash), a row without a mark
goes back as it was (never attempted). So at most the message each thread was sending at the
kill can be sent twice, and stats count exactly those. The lease is also a fencing token: a
batch records only rows it still holds.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from campaigns.models import Campaign, Delivery
from contacts.models import Contact, ContactTopic
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.types import UTCDateTime, in_values, utcnow

log = logging.getLogger(__name__)

D = Delivery.__table__
SENT = ("sent", "delivered", "undelivered")
FINAL = ("sent", "delivered", "undelivered", "failed", "bounced", "skipped")
STOP_CHECK_SECONDS = 0.25  # pause/cancel take effect within this (plus one send)
ERROR_WINDOW = 100         # recent outcomes the auto-pause looks at
ERROR_MIN = 20             # ... and never on fewer than this
HEARTBEAT_SECONDS = 120    # a campaign with no batch started for this long has lost its messages
DELAYED_MESSAGE_MAX = 300  # retries due sooner get a delayed message; later ones wait for the requeue
# Twilio codes that say the number is not a mobile line that can receive SMS.
INVALID_NUMBER_CODES = {21211, 21214, 21217, 21614}
UNSUBSCRIBED_CODES = {21610}


# ------------------------------------------------------------------ helpers

def _cfg(key: str, default=None):
    return current_app.config.get(key, default)


def _redis():
    from campaigns.ratelimit import redis_client

    return redis_client()


def _stop_key(campaign_id: int) -> str:
    return f"envoi:campaign:{campaign_id}:stop"


def _alive_key(campaign_id: int) -> str:
    return f"envoi:campaign:{campaign_id}:alive"


def _errors_key(campaign_id: int) -> str:
    return f"envoi:campaign:{campaign_id}:outcomes"


def _progress_key(campaign_id: int) -> str:
    return f"envoi:campaign:{campaign_id}:progress"


class _MarkFailed(Exception):
    """Redis did not take a message's progress mark: the message must not leave."""


class _Progress:
    """Per-message progress of a batch in Redis, read by `requeue_due` after a crash.

    One write per message: a message's 'sent' mark travels with the next message's 'a' mark. A
    crash in between leaves the sent message marked 'a': sent again after the reclaim and
    counted as a possible duplicate, so the bound stays one message per thread.

    The mark costs no round trip of its own: `begin` writes it to Redis without waiting, the
    channel sends the message's envelope meanwhile, and `confirm` (the channel's `before_data`
    hook, before the content leaves) reads Redis's answer; `settle` reads it when the send
    stopped before that.
    """

    def __init__(self, campaign_id: int):
        self.key, self.touched, self.pending = _progress_key(campaign_id), [], {}
        self._conn, self._row = None, None
        self._held = None  # one pooled connection for the whole batch (not taken and given back per message)

    def _connection(self):
        if self._held is None:
            self._held = _redis().connection_pool.get_connection()
        return self._held

    def _lose(self) -> None:
        """The held connection failed: closed and given back; the next mark takes a fresh one."""
        conn, self._held = self._held, None
        if conn is not None:
            conn.disconnect()
            _redis().connection_pool.release(conn)

    def begin(self, row_id: int) -> None:
        """Send the marks; raises (nothing sent) when Redis cannot be written to."""
        self.settle()  # the previous message's answer, when its send stopped before the hook
        conn = self._connection()
        commands = [("HSET", self.key, *[x for pair in {**self.pending, row_id: "a"}.items() for x in pair])]
        if not self.touched:
            commands.append(("EXPIRE", self.key, 7 * 86400))
        try:
            conn.send_packed_command(conn.pack_commands(commands))
        except BaseException:
            self._lose()
            raise
        self._conn, self._row, self._answers = conn, row_id, len(commands)

    def confirm(self) -> None:
        """Wait for Redis's answer to `begin`; _MarkFailed if the mark was not taken."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            for _ in range(self._answers):
                conn.read_response()
        except Exception as err:  # noqa: BLE001  (connection lost, an error reply)
            self._lose()
            raise _MarkFailed(f"progress mark failed: {err}") from None
        self.pending = {}
        self.touched.append(self._row)

    def settle(self) -> None:
        """After a send that stopped before `confirm`: read the answer (its marks are kept or not)."""
        try:
            self.confirm()
        except _MarkFailed:
            pass

    def sent(self, row_id: int, sent_at: datetime, provider_id: str | None) -> None:
        self.pending[row_id] = f"s {sent_at.isoformat()} {provider_id or ''}".rstrip()

    def release(self) -> None:
        """The batch is over: the last answer read, the held connection given back to the pool."""
        self.settle()
        conn, self._held = self._held, None
        if conn is not None:
            _redis().connection_pool.release(conn)

    def clear(self) -> None:
        """After the batch's results are committed, the marks have served."""
        self.release()
        if self.touched:
            try:
                _redis().hdel(self.key, *self.touched)
            except Exception:  # noqa: BLE001  (stale marks of recorded rows are never read)
                pass


def _read_progress(campaign_id: int, ids: list[int]) -> dict[int, str] | None:
    """{delivery id: mark} for the ids that have one; None when Redis cannot say."""
    if not ids:
        return {}
    try:
        values = _redis().hmget(_progress_key(campaign_id), ids)
    except Exception:  # noqa: BLE001
        return None
    return {i: v.decode() for i, v in zip(ids, values) if v is not None}


def _locked_campaign(campaign_id: int) -> Campaign:
    if not isinstance(campaign_id, int) or not 0 < campaign_id < 2**63:
        raise NotFound("campaign not found")
    campaign = db.session.scalar(sa.select(Campaign).where(Campaign.id == campaign_id).with_for_update())
    if campaign is None:
        raise NotFound("campaign not found")
    return campaign


def _batch_actor():
    from workers.campaigns import deliver_batch

    return deliver_batch


class _Delayed:
    """enqueue_after_commit calls `.send(*args)`: this one sends with a delay (milliseconds)."""

    def __init__(self, actor, delay_ms: int):
        self.actor, self.delay_ms = actor, delay_ms

    def send(self, *args):
        return self.actor.send_with_options(args=args, delay=self.delay_ms)


def _enqueue(campaign_id: int, lo: int, hi: int, delay_ms: int = 0) -> None:
    from envoi.tasks import enqueue_after_commit

    actor = _batch_actor()
    enqueue_after_commit(_Delayed(actor, delay_ms) if delay_ms > 0 else actor, campaign_id, lo, hi)


def _queued_ranges(campaign_id: int, batch: int, due_at: datetime | None = None):
    """(lo, hi) id ranges of at most `batch` queued rows each, streamed by the database."""
    where = [D.c.campaign_id == campaign_id, D.c.status == "queued"]
    if due_at is not None:
        where.append(sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= due_at))
    bucket = (sa.func.row_number().over(order_by=D.c.id) - 1) // batch
    sub = sa.select(D.c.id, bucket.label("b")).where(*where).subquery()
    query = sa.select(sa.func.min(sub.c.id), sa.func.max(sub.c.id)).group_by(sub.c.b).order_by(sub.c.b)
    return db.session.execute(query).all()


def _enqueue_queued(campaign_id: int, due_at: datetime | None = None) -> int:
    ranges = _queued_ranges(campaign_id, _cfg("CAMPAIGN_BATCH_SIZE", 200), due_at)
    for lo, hi in ranges:
        _enqueue(campaign_id, lo, hi)
    return len(ranges)


def _audience(campaign: Campaign) -> list:
    """WHERE conditions on contacts selecting the campaign's recipients right now."""
    from segments.models import Segment
    from segments.services import segment_query

    if campaign.segment_id is None and campaign.topic_id is None:
        raise ValidationError("campaign has no audience", {"segment_id": "a segment or a topic is required"})
    where = [Contact.erased_at.is_(None)]
    if campaign.channel == "email":
        where += [Contact.email_status == "confirmed", Contact.email.isnot(None)]
    else:
        where += [Contact.sms_status == "confirmed", Contact.phone.isnot(None)]
    if campaign.segment_id is not None:
        segment = db.session.get(Segment, campaign.segment_id)
        if segment is None:
            raise ValidationError("campaign has no audience", {"segment_id": "the segment no longer exists"})
        # The segment's own conditions on the same scan of contacts (no self-join to plan).
        where.append(segment_query(segment.rules).whereclause)
    if campaign.topic_id is not None:
        where.append(Contact.id.in_(sa.select(ContactTopic.contact_id).where(
            ContactTopic.topic_id == campaign.topic_id, ContactTopic.subscribed.is_(True))))
    for segment_id in campaign.exclude_segment_ids or ():
        excluded = db.session.get(Segment, segment_id) if isinstance(segment_id, int) else None
        if excluded is not None:
            where.append(Contact.id.not_in(segment_query(excluded.rules)))
    return where


# ------------------------------------------------------------------ launch and controls

def launch(campaign_id: int, at: datetime | None = None, author_id: int | None = None) -> Campaign:
    """Send a draft (or paused) campaign now, or schedule it for `at`; Conflict otherwise."""
    campaign = _locked_campaign(campaign_id)
    if campaign.status == "paused":
        return _resume(campaign)
    if campaign.status not in ("draft", "scheduled"):
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: it cannot be sent")
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        db.session.rollback()
        raise ValidationError("invalid send time", {"at": "an ISO time with its offset"})
    _audience(campaign)  # no audience: 422 before anything is written
    from campaigns.rendering import compiled

    compiled(campaign)  # a template that does not compile is refused now, not per message
    now = utcnow()
    if author_id is not None and campaign.author_id is None:
        campaign.author_id = author_id
    campaign.updated_at = now
    if at is not None and at > now + timedelta(seconds=1):
        campaign.status, campaign.send_at, campaign.status_reason = "scheduled", at, None
        db.session.commit()
        return campaign
    _start(campaign, now)
    db.session.commit()
    return campaign


def _start(campaign: Campaign, now: datetime) -> None:
    """Write the deliveries (one INSERT ... SELECT, idempotent) and enqueue their batches."""
    try:
        _redis().delete(_stop_key(campaign.id), _errors_key(campaign.id))
    except Exception:  # noqa: BLE001  (Redis down: the claim still checks the status)
        log.warning("campaign %s: cannot clear its stop flag in Redis", campaign.id)
    campaign.status, campaign.status_reason = "sending", None
    campaign.started_at = campaign.started_at or now
    campaign.send_at = campaign.send_at or now
    campaign.updated_at = now
    db.session.flush()
    rows = sa.select(sa.literal(campaign.id, sa.BigInteger), Contact.id, sa.literal(campaign.channel),
                     sa.literal("queued"), sa.literal(now, D.c.updated_at.type)).where(*_audience(campaign))
    columns = ["campaign_id", "contact_id", "channel", "status", "updated_at"]
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(D).from_select(columns, rows).on_conflict_do_nothing(
            index_elements=["campaign_id", "contact_id"])
    else:
        stmt = sa.insert(D).from_select(columns, rows).prefix_with("OR IGNORE")
    db.session.execute(stmt)
    campaign.targeted = db.session.scalar(sa.select(sa.func.count()).where(D.c.campaign_id == campaign.id))
    if _enqueue_queued(campaign.id) == 0:
        _finish_if_done(campaign.id, now)
    _heartbeat(campaign.id)


def _set_stop_flag(campaign_id: int, status: str | None) -> None:
    try:
        if status:
            _redis().set(_stop_key(campaign_id), status, ex=7 * 86400)
        else:
            _redis().delete(_stop_key(campaign_id), _errors_key(campaign_id))
    except Exception:  # noqa: BLE001  (the database status still stops the next claim)
        log.warning("campaign %s: cannot write its stop flag to Redis", campaign_id)


def pause(campaign_id: int) -> Campaign:
    """Stop sending within a second; rows not yet sent stay queued for `resume`."""
    campaign = _locked_campaign(campaign_id)
    if campaign.status not in ("sending", "scheduled"):
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: only a sending or scheduled campaign can be paused")
    campaign.status, campaign.status_reason, campaign.updated_at = "paused", None, utcnow()
    db.session.commit()
    _set_stop_flag(campaign.id, "paused")
    return campaign


def resume(campaign_id: int) -> Campaign:
    """Continue a paused campaign where it stopped."""
    campaign = _locked_campaign(campaign_id)
    if campaign.status != "paused":
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: only a paused campaign can be resumed")
    return _resume(campaign)


def _resume(campaign: Campaign) -> Campaign:
    now = utcnow()
    _set_stop_flag(campaign.id, None)
    campaign.updated_at = now
    if campaign.started_at is None:  # paused before it started: back to its schedule
        if campaign.send_at is not None and campaign.send_at > now:
            campaign.status, campaign.status_reason = "scheduled", None
        else:
            _start(campaign, now)
        db.session.commit()
        return campaign
    campaign.status, campaign.status_reason = "sending", None
    if _enqueue_queued(campaign.id) == 0:
        _finish_if_done(campaign.id, now)
    _heartbeat(campaign.id)
    db.session.commit()
    return campaign


def cancel(campaign_id: int) -> Campaign:
    """Stop for good: what was not sent is never sent (its rows stay queued, visible in stats)."""
    campaign = _locked_campaign(campaign_id)
    if campaign.status not in ("scheduled", "sending", "paused"):
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: it cannot be cancelled")
    now = utcnow()
    campaign.status, campaign.finished_at, campaign.updated_at = "cancelled", now, now
    db.session.commit()
    _set_stop_flag(campaign.id, "cancelled")
    return campaign


def stats(campaign_id: int) -> dict:
    """Counts per outcome, from the deliveries (one GROUP BY) and the message events."""
    from segments.models import MessageEvent

    # Columns, not the entity: the caller's session may hold a campaign loaded before workers moved it.
    campaign = db.session.execute(sa.select(Campaign.targeted, Campaign.status, Campaign.status_reason)
                                  .where(Campaign.id == campaign_id)).one_or_none() \
        if isinstance(campaign_id, int) and 0 < campaign_id < 2**63 else None
    if campaign is None:
        raise NotFound("campaign not found")
    rows = db.session.execute(
        sa.select(D.c.status, sa.func.count(), sa.func.sum(sa.case((D.c.reclaims > 0, 1), else_=0)))
        .where(D.c.campaign_id == campaign_id).group_by(D.c.status)).all()
    counts = {status: n for status, n, _ in rows}
    duplicates = sum(dup or 0 for status, _, dup in rows if status in SENT)
    unsubscribed = db.session.scalar(sa.select(sa.func.count()).select_from(MessageEvent).where(
        MessageEvent.campaign_id == campaign_id, MessageEvent.kind == "unsubscribed"))
    return {
        "targeted": campaign.targeted,
        "queued": counts.get("queued", 0) + counts.get("sending", 0),
        "sending": counts.get("sending", 0),
        "sent": sum(counts.get(s, 0) for s in SENT),
        "failed": counts.get("failed", 0),
        "bounced": counts.get("bounced", 0),
        "skipped": counts.get("skipped", 0),
        "delivered": counts.get("delivered", 0),
        "undelivered": counts.get("undelivered", 0),
        "unsubscribed": unsubscribed,
        "duplicates_possible": duplicates,
        "status": campaign.status,
        "status_reason": campaign.status_reason,
    }


# ------------------------------------------------------------------ the batch sender

def _claim(campaign_id: int, lo: int, hi: int, limit: int, now: datetime, lease_until: datetime) -> list:
    """Lease up to `limit` due queued rows of [lo, hi] of a sending campaign: (id, contact_id, attempts)."""
    pick = (sa.select(D.c.id)
            .where(D.c.campaign_id == campaign_id, D.c.id >= lo, D.c.id <= hi, D.c.status == "queued",
                   sa.or_(D.c.next_attempt_at.is_(None), D.c.next_attempt_at <= now))
            .order_by(D.c.id).limit(limit))
    if db.session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    # A CTE, not `IN (subquery)`: PostgreSQL may run a subquery again per outer row, and with
    # SKIP LOCKED each run can pick other rows, so the LIMIT would not bound the claim.
    pick = pick.cte("pick")
    sending = sa.exists().where(Campaign.id == campaign_id, Campaign.status == "sending")
    stmt = (sa.update(D).where(D.c.id.in_(sa.select(pick.c.id)), D.c.status == "queued", sending)
            .values(status="sending", lease_until=lease_until, attempts=D.c.attempts + 1, updated_at=now)
            .returning(D.c.id, D.c.contact_id, D.c.attempts))
    return sorted(db.session.execute(stmt).all())


def _heartbeat(campaign_id: int) -> None:
    try:
        _redis().set(_alive_key(campaign_id), "1", ex=HEARTBEAT_SECONDS)
    except Exception:  # noqa: BLE001
        pass


def _backoff(attempts: int) -> float:
    base = float(_cfg("DELIVERY_RETRY_BASE_SECONDS"))
    return min(6 * 3600.0, base * 2 ** max(0, attempts - 1) * random.uniform(0.5, 1.5))


class _StopWatch:
    """Reads the campaign's stop flag (set by pause/cancel/auto-pause) at most every 0.25 s."""

    def __init__(self, campaign_id: int):
        self.key, self.next_check, self.stopped = _stop_key(campaign_id), 0.0, None

    def __call__(self) -> str | None:
        now = time.monotonic()
        if self.stopped is None and now >= self.next_check:
            self.next_check = now + STOP_CHECK_SECONDS
            try:
                value = _redis().get(self.key)
            except Exception:  # noqa: BLE001
                value = None
            self.stopped = value.decode() if value else None
        return self.stopped


def _recheck(campaign: Campaign, contact_ids: list[int]) -> tuple[dict, set, set]:
    """Contacts of the batch, topic unsubscribes and erased (suppressed) values: consent at send time."""
    from contacts.services import suppressed_values

    query = sa.select(Contact)
    if campaign.topic_id is not None:
        query = sa.select(Contact, ContactTopic.subscribed).outerjoin(ContactTopic, sa.and_(
            ContactTopic.contact_id == Contact.id, ContactTopic.topic_id == campaign.topic_id))
    contacts, unsubscribed = {}, set()
    dialect = db.session.get_bind().dialect.name
    for row in db.session.execute(query.where(in_values(Contact.id, contact_ids, dialect))):
        contacts[row[0].id] = row[0]
        if campaign.topic_id is not None and not row[1]:
            unsubscribed.add(row[0].id)
    if campaign.channel == "email":
        suppressed = suppressed_values(emails=[c.email for c in contacts.values() if c.email])
    else:
        suppressed = suppressed_values(phones=[c.phone for c in contacts.values() if c.phone])
    return contacts, unsubscribed, suppressed


def _skip_reason(channel: str, contact: Contact | None, unsubscribed: set, suppressed: set) -> str | None:
    if contact is None:
        return "contact deleted"
    if contact.erased_at is not None:
        return "contact erased"
    status = contact.email_status if channel == "email" else contact.sms_status
    if status != "confirmed":
        return f"{channel} status is {status}"
    address = contact.email if channel == "email" else contact.phone
    if not address:
        return "no email address" if channel == "email" else "no phone number"
    if address in suppressed:
        return "address suppressed"
    if contact.id in unsubscribed:
        return "unsubscribed from the topic"
    return None


def deliver_batch(campaign_id: int, lo: int, hi: int) -> dict:
    """Send the due queued deliveries of ids [lo, hi] of a sending campaign; record results in bulk.

    Idempotent: rows are claimed under a lease, so a batch run twice (or two overlapping
    batches) sends each row once. Returns counts per outcome (for logs and tests).
    """
    from campaigns import channels, ratelimit
    from campaigns.channels import PermanentError, TransientError

    limit = _cfg("CAMPAIGN_BATCH_SIZE", 200)
    lease = _cfg("DELIVERY_LEASE_SECONDS", 300)
    max_attempts = _cfg("DELIVERY_MAX_ATTEMPTS", 5)
    now = utcnow()
    lease_until = now + timedelta(seconds=lease)
    rows = _claim(campaign_id, lo, hi, limit, now, lease_until)
    db.session.commit()
    if not rows:
        _finish_if_done(campaign_id, now)
        db.session.commit()
        return {}
    _heartbeat(campaign_id)
    # Stop sending well before the lease expires, so no live worker's rows are ever reclaimed.
    deadline = time.monotonic() + lease * 0.8
    results: list[dict] = []
    outcome: dict[str, int] = {}
    events: list[dict] = []
    contact_status: dict[tuple[str, str], list[int]] = {}
    retry_at: list[tuple[int, datetime]] = []
    failures, last_error, attempted, done = 0, None, 0, 0
    channel, wait_until, stopped_early = None, None, False
    progress = None
    try:
        campaign = db.session.get(Campaign, campaign_id)
        channel = campaign.channel
        contacts, unsubscribed, suppressed = _recheck(campaign, [r.contact_id for r in rows])
        from campaigns.rendering import compiled

        template = compiled(campaign)
        rate = ratelimit.limiter(channel)
        tokens = 0
        stopped = _StopWatch(campaign_id)
        progress = _Progress(campaign_id)
        callback = _cfg("BASE_URL", "").rstrip("/") + "/webhooks/twilio/status"
        next_allowed = None
        if channel == "sms":
            from campaigns.sms import next_allowed_time as next_allowed

        def result(row, status, **values):
            outcome[status] = outcome.get(status, 0) + 1
            results.append({"b_id": row.id, "b_lease": lease_until, "status": status,
                            "attempts": values.get("attempts", row.attempts),
                            "sent_at": values.get("sent_at"), "provider_id": values.get("provider_id"),
                            "error": values.get("error"), "error_code": values.get("error_code"),
                            "next_attempt_at": values.get("next_attempt_at")})

        for row in rows:
            if stopped() or time.monotonic() > deadline:
                stopped_early = True
                break
            contact = contacts.get(row.contact_id)
            reason = _skip_reason(channel, contact, unsubscribed, suppressed)
            if reason:
                result(row, "skipped", error=reason)
                done += 1
                continue
            if next_allowed is not None:
                now_utc = utcnow()
                allowed = next_allowed(now_utc, contact.timezone)
                if allowed > now_utc:  # quiet hours where the recipient lives: wait, not an attempt
                    result(row, "queued", attempts=row.attempts - 1, next_attempt_at=allowed)
                    retry_at.append((row.id, allowed))
                    done += 1
                    continue
            if tokens == 0:
                want = min(rate.chunk, len(rows) - done)
                reservation = rate.reserve(want, max_wait=min(5.0, max(0.0, deadline - time.monotonic())))
                if not reservation.granted:  # an hourly limit: put the rest back for later
                    wait_until = utcnow() + timedelta(seconds=reservation.wait)
                    stopped_early = True
                    break
                if reservation.wait > 0:
                    time.sleep(reservation.wait)
                tokens = want
            tokens -= 1
            attempted += 1
            try:
                if channel == "email":
                    message = template.email(contact, delivery_id=row.id)
                else:
                    body = template.sms(contact, track=True)
            except Exception as err:  # noqa: BLE001  (a template that fails on this contact's data)
                result(row, "failed", error=f"rendering failed: {err}"[:2000])
                failures += 1
                done += 1
                continue
            try:
                progress.begin(row.id)
            except Exception as err:  # noqa: BLE001  (no mark, no send: retried when Redis is back)
                when = utcnow() + timedelta(seconds=_backoff(row.attempts))
                result(row, "queued", attempts=row.attempts - 1, error=f"progress mark failed: {err}"[:2000],
                       next_attempt_at=when)
                retry_at.append((row.id, when))
                failures, last_error = failures + 1, str(err)
                done += 1
                continue
            try:
                if channel == "email":
                    # The mark is confirmed once the server took the envelope, before the content.
                    provider_id = channels.send_email(message, before_data=progress.confirm)
                else:
                    progress.confirm()
                    provider_id = channels.send_sms(contact.phone, body, status_callback=f"{callback}?d={row.id}")
            except _MarkFailed as err:  # not sent: retried when Redis is back
                when = utcnow() + timedelta(seconds=_backoff(row.attempts))
                result(row, "queued", attempts=row.attempts - 1, error=str(err)[:2000], next_attempt_at=when)
                retry_at.append((row.id, when))
                failures, last_error = failures + 1, str(err)
            except TransientError as err:
                failures, last_error = failures + 1, str(err)
                if row.attempts >= max_attempts:
                    result(row, "failed", error=str(err)[:2000], error_code=err.code)
                else:
                    when = utcnow() + timedelta(seconds=_backoff(row.attempts))
                    result(row, "queued", error=str(err)[:2000], error_code=err.code, next_attempt_at=when)
                    retry_at.append((row.id, when))
            except PermanentError as err:
                failures, last_error = failures + 1, str(err)
                status = "failed"
                if channel == "email" and str(err).startswith("recipient refused"):
                    status = "bounced"  # 5xx on RCPT: a hard bounce, no more email to this address
                    contact_status.setdefault(("email", "bounced"), []).append(contact.id)
                    events.append({"contact_id": contact.id, "kind": "bounced"})
                elif channel == "sms" and err.code in UNSUBSCRIBED_CODES:
                    contact_status.setdefault(("sms", "unsubscribed"), []).append(contact.id)
                elif channel == "sms" and err.code in INVALID_NUMBER_CODES:
                    contact_status.setdefault(("sms", "invalid"), []).append(contact.id)
                result(row, status, error=str(err)[:2000], error_code=err.code)
            else:
                progress.settle()  # a channel that had no use for the hook (the dev outbox: called)
                sent_at, provider_id = utcnow(), (provider_id or None) and provider_id[:300]
                progress.sent(row.id, sent_at, provider_id)
                result(row, "sent", sent_at=sent_at, provider_id=provider_id)
                events.append({"contact_id": contact.id, "kind": "sent"})
            done += 1
    finally:
        # Whatever stopped the loop (pause, deadline, rate, an unexpected error), rows not
        # handled go back to the queue as they were: they were not attempted.
        handled = {r["b_id"] for r in results}
        for row in rows:
            if row.id not in handled:
                results.append({"b_id": row.id, "b_lease": lease_until, "status": "queued",
                                "attempts": row.attempts - 1, "sent_at": None, "provider_id": None,
                                "error": None, "error_code": None, "next_attempt_at": wait_until})
                if wait_until is not None:
                    retry_at.append((row.id, wait_until))
        db.session.rollback()  # nothing pending but reads
        try:
            _record(campaign_id, channel if results else None, results, events, contact_status)
        except BaseException:
            if progress is not None:
                progress.release()  # the marks stay: the rows are settled from them after the lease
            raise
        if progress is not None:
            progress.clear()
    _after_batch(campaign_id, rows, retry_at, failures, attempted, last_error, hi, stopped_early)
    return outcome


_RESULT_KEYS = ("b_id", "b_lease", "status", "attempts", "sent_at", "provider_id", "error", "error_code",
                "next_attempt_at")
# The executemany UPDATE of _record as one statement on PostgreSQL: same conditions (the lease as a
# fencing token, a row's status moves only from 'sending'), same values.
_PG_RECORD = sa.text("""
UPDATE deliveries AS d
SET status = CASE WHEN d.status = 'sending' THEN v.status ELSE d.status END,
    attempts = v.attempts, sent_at = COALESCE(v.sent_at, d.sent_at),
    provider_id = COALESCE(v.provider_id, d.provider_id), error = v.error, error_code = v.error_code,
    next_attempt_at = v.next_attempt_at, lease_until = NULL, updated_at = :now
FROM unnest(CAST(:b_id AS bigint[]), CAST(:b_lease AS timestamptz[]), CAST(:status AS text[]),
            CAST(:attempts AS integer[]), CAST(:sent_at AS timestamptz[]), CAST(:provider_id AS text[]),
            CAST(:error AS text[]), CAST(:error_code AS integer[]), CAST(:next_attempt_at AS timestamptz[]))
     AS v(id, lease, status, attempts, sent_at, provider_id, error, error_code, next_attempt_at)
WHERE d.id = v.id AND d.lease_until = v.lease
""")

# The batch's events (what segments.models.insert_events writes, the same columns and values) as one
# statement of two arrays: its text is the same for every batch (a 200-row VALUES list is parsed
# by psycopg and planned by PostgreSQL anew each time).
_PG_EVENTS = sa.text("""
INSERT INTO message_events (contact_id, campaign_id, channel, kind, occurred_at, is_bot, data)
SELECT v.contact_id, :campaign_id, :channel, v.kind, :at, false, '{}'::jsonb
FROM unnest(CAST(:contact_id AS bigint[]), CAST(:kind AS text[])) WITH ORDINALITY AS v(contact_id, kind, n)
ORDER BY v.n
""").bindparams(sa.bindparam("at", type_=UTCDateTime()))


def _record(campaign_id: int, channel: str | None, results: list[dict], events: list[dict],
            contact_status: dict) -> None:
    """One executemany UPDATE for the batch's rows, bulk events and contact statuses, one commit."""
    from segments.models import insert_events

    now = utcnow()
    postgres = db.session.get_bind().dialect.name == "postgresql"
    if results and postgres:
        # One statement for the batch (one plan, one round trip) instead of one UPDATE per row.
        columns = {key: [r[key] for r in results] for key in _RESULT_KEYS}
        db.session.execute(_PG_RECORD, {**columns, "now": now})
    elif results:
        stmt = (sa.update(D).where(D.c.id == sa.bindparam("b_id"), D.c.lease_until == sa.bindparam("b_lease"))
                .values(status=sa.case((D.c.status == "sending", sa.bindparam("status")), else_=D.c.status),
                        attempts=sa.bindparam("attempts"),
                        sent_at=sa.func.coalesce(sa.bindparam("sent_at", type_=D.c.sent_at.type), D.c.sent_at),
                        provider_id=sa.func.coalesce(sa.bindparam("provider_id"), D.c.provider_id),
                        error=sa.bindparam("error"), error_code=sa.bindparam("error_code"),
                        next_attempt_at=sa.bindparam("next_attempt_at"), lease_until=None, updated_at=now))
        db.session.execute(stmt, results)
    if events and postgres:
        db.session.execute(_PG_EVENTS, {"contact_id": [e["contact_id"] for e in events],
                                        "kind": [e["kind"] for e in events], "campaign_id": campaign_id,
                                        "channel": channel, "at": now})
    elif events:
        insert_events(db.session.connection(), [
            {"contact_id": e["contact_id"], "campaign_id": campaign_id, "channel": channel, "kind": e["kind"],
             "occurred_at": now, "is_bot": False, "data": {}} for e in events])
    for (chan, status), ids in contact_status.items():
        column = Contact.email_status if chan == "email" else Contact.sms_status
        at = Contact.email_status_at if chan == "email" else Contact.sms_status_at
        db.session.execute(sa.update(Contact).where(Contact.id.in_(ids), column != status)
                           .values({column: status, at: now, Contact.updated_at: now})
                           .execution_options(synchronize_session=False))
    db.session.commit()


def _after_batch(campaign_id, rows, retry_at, failures, attempted, last_error, hi, stopped_early) -> None:
    """Auto-pause on errors, retries and continuation enqueued, the campaign finished when done."""
    now = utcnow()
    if attempted:
        _watch_errors(campaign_id, failures, attempted, last_error)
    if retry_at:
        ids = [i for i, _ in retry_at]
        delay = max(0.0, (max(when for _, when in retry_at) - now).total_seconds())
        if delay <= DELAYED_MESSAGE_MAX:  # longer waits are found by the periodic requeue
            _enqueue(campaign_id, min(ids), max(ids), int(delay * 1000))
    if not stopped_early and len(rows) == _cfg("CAMPAIGN_BATCH_SIZE", 200) and rows[-1].id < hi:
        _enqueue(campaign_id, rows[-1].id + 1, hi)
    _finish_if_done(campaign_id, now)
    db.session.commit()


def _watch_errors(campaign_id: int, failures: int, attempted: int, last_error: str | None) -> None:
    """Pause the campaign when the failure share of its recent messages exceeds the configured rate."""
    limit = float(_cfg("CAMPAIGN_PAUSE_ERROR_RATE", 0.2))
    if limit >= 1:
        return
    key = _errors_key(campaign_id)
    try:
        outcomes = ["1"] * failures + ["0"] * max(0, attempted - failures)
        pipe = _redis().pipeline()
        pipe.rpush(key, *outcomes)
        pipe.ltrim(key, -ERROR_WINDOW, -1)
        pipe.expire(key, 7 * 86400)
        pipe.lrange(key, 0, -1)
        window = pipe.execute()[-1]
    except Exception:  # noqa: BLE001
        return
    if len(window) < ERROR_MIN:
        return
    failed = sum(1 for v in window if v == b"1")
    share = failed / len(window)
    if share <= limit:
        return
    reason = (f"paused automatically: {failed} of the last {len(window)} messages failed "
              f"({share:.0%}, above {limit:.0%})" + (f"; last error: {last_error[:300]}" if last_error else ""))
    moved = db.session.execute(sa.update(Campaign).where(Campaign.id == campaign_id, Campaign.status == "sending")
                               .values(status="paused", status_reason=reason, updated_at=utcnow())
                               .execution_options(synchronize_session=False)).rowcount
    db.session.commit()
    if moved:
        log.warning("campaign %s %s", campaign_id, reason)
        _set_stop_flag(campaign_id, "paused")


def _finish_if_done(campaign_id: int, now: datetime) -> bool:
    """A sending campaign whose rows are all final is sent.

    Run after every batch, so it looks from the newest id down: rows are claimed in id order, and
    each claimed row leaves its 'queued' (then 'sending') index entry behind until a VACUUM, at the
    low ids. `EXISTS (status IN ...)` walked all of them (at half a 1,000,000-row campaign: 2,500
    to 8,600 buffers, 45-800 ms a batch); from the top, the first live row is met at once (4 buffers).
    """
    def newest(status: str):
        return (sa.select(D.c.id).where(D.c.campaign_id == campaign_id, D.c.status == status)
                .order_by(D.c.id.desc()).limit(1).scalar_subquery())

    return bool(db.session.execute(
        sa.update(Campaign).where(Campaign.id == campaign_id, Campaign.status == "sending",
                                  newest("queued").is_(None), newest("sending").is_(None))
        .values(status="sent", finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)).rowcount)


# ------------------------------------------------------------------ the scheduler's side

def requeue_due(force: bool = False) -> dict:
    """Start scheduled campaigns that are due, reclaim expired leases, re-enqueue lost work.

    Run every minute by the scheduler. A campaign is re-enqueued when it has queued rows due
    and no batch of it started for a while (the broker lost its messages), when leases were
    reclaimed, or when `force` is given; a batch run twice is harmless (rows are claimed).
    """
    now = utcnow()
    report = {"started": 0, "reclaimed": 0, "requeued": 0, "finished": 0}
    due = db.session.scalars(sa.select(Campaign.id).where(Campaign.status == "scheduled",
                                                          Campaign.send_at <= now)).all()
    for campaign_id in due:
        campaign = _locked_campaign(campaign_id)
        if campaign.status == "scheduled" and campaign.send_at is not None and campaign.send_at <= now:
            try:
                _start(campaign, now)
                report["started"] += 1
            except ValidationError as err:  # the segment went away meanwhile: say why
                campaign.status, campaign.status_reason = "paused", f"cannot start: {err.fields or err}"
        db.session.commit()
    sending = db.session.scalars(sa.select(Campaign.id).where(Campaign.status == "sending")).all()
    for campaign_id in sending:
        reclaimed = _reclaim(campaign_id, now)
        report["reclaimed"] += reclaimed
        try:
            alive = bool(_redis().exists(_alive_key(campaign_id)))
        except Exception:  # noqa: BLE001
            alive = False
        if force or reclaimed or not alive:
            report["requeued"] += _enqueue_queued(campaign_id, due_at=now)
            _heartbeat(campaign_id)
        report["finished"] += _finish_if_done(campaign_id, now)
        db.session.commit()
    return report


def _reclaim(campaign_id: int, now: datetime) -> int:
    """Rows whose lease expired (their worker died): settle them from the progress marks."""
    expired = db.session.execute(
        sa.select(D.c.id, D.c.contact_id, D.c.channel).where(D.c.campaign_id == campaign_id,
                                                             D.c.status == "sending", D.c.lease_until < now)
        .with_for_update()).all()
    if not expired:
        return 0
    marks = _read_progress(campaign_id, [r.id for r in expired])
    expired_now = sa.and_(D.c.status == "sending", D.c.lease_until < now)
    sent, attempted, untouched = [], [], []
    for row in expired:
        mark = None if marks is None else marks.get(row.id, "")
        if mark is None or mark == "a":
            attempted.append(row.id)  # may have left before the crash: sent again, counted
        elif mark.startswith("s "):
            sent.append((row, mark))
        else:
            untouched.append(row.id)  # never attempted: back to the queue as it was
    if attempted:
        db.session.execute(sa.update(D).where(D.c.id.in_(attempted), expired_now)
                           .values(status="queued", lease_until=None, reclaims=D.c.reclaims + 1, updated_at=now))
    if untouched:
        db.session.execute(sa.update(D).where(D.c.id.in_(untouched), expired_now)
                           .values(status="queued", lease_until=None, attempts=D.c.attempts - 1, updated_at=now))
    if sent:
        from segments.models import insert_events

        values = []
        for row, mark in sent:
            _, at, *provider = mark.split(" ", 2)
            values.append({"b_id": row.id, "b_sent_at": datetime.fromisoformat(at),
                           "b_provider": (provider[0] if provider else None)})
        db.session.execute(sa.update(D).where(D.c.id == sa.bindparam("b_id"), expired_now)
                           .values(status="sent", lease_until=None, sent_at=sa.bindparam("b_sent_at", type_=D.c.sent_at.type),
                                   provider_id=sa.bindparam("b_provider"), error=None, updated_at=now), values)
        insert_events(db.session.connection(), [
            {"contact_id": row.contact_id, "campaign_id": campaign_id, "channel": row.channel, "kind": "sent",
             "occurred_at": v["b_sent_at"], "is_bot": False, "data": {}} for (row, _), v in zip(sent, values)])
    return len(expired)


# ------------------------------------------------------------------ Twilio status callbacks

_RANK = {"queued": 0, "sending": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def record_sms_status(message_sid: str, status: str, delivery_id: int | None = None,
                      error_code: int | None = None) -> bool:
    """Move an SMS delivery forward on a Twilio status callback; never backward. True if it moved."""
    from segments.models import MessageEvent

    status = {"accepted": "queued", "scheduled": "queued", "sending": "queued", "read": "delivered",
              "canceled": "failed"}.get(status, status)
    if status not in _RANK or status == "queued":
        return False
    query = sa.select(Delivery).where(Delivery.channel == "sms")
    if delivery_id is not None:
        query = query.where(Delivery.id == delivery_id)
    else:
        query = query.where(Delivery.provider_id == message_sid)
    delivery = db.session.scalar(query.with_for_update())
    if delivery is None or (delivery.provider_id and delivery.provider_id != message_sid):
        db.session.rollback()
        return False
    if delivery.status not in _RANK or _RANK[status] <= _RANK[delivery.status]:
        db.session.rollback()
        return False
    now = utcnow()
    delivery.status, delivery.updated_at = status, now
    delivery.provider_id = delivery.provider_id or message_sid
    delivery.sent_at = delivery.sent_at or now
    if status in ("undelivered", "failed") and error_code:
        delivery.error_code, delivery.error = error_code, f"Twilio {status}: error {error_code}"
        if error_code in UNSUBSCRIBED_CODES or error_code in INVALID_NUMBER_CODES:
            new = "unsubscribed" if error_code in UNSUBSCRIBED_CODES else "invalid"
            db.session.execute(sa.update(Contact).where(Contact.id == delivery.contact_id, Contact.sms_status != new)
                               .values(sms_status=new, sms_status_at=now, updated_at=now)
                               .execution_options(synchronize_session=False))
    if status == "delivered":
        db.session.add(MessageEvent(contact_id=delivery.contact_id, campaign_id=delivery.campaign_id,
                                    channel="sms", kind="delivered", occurred_at=now, data={}))
    db.session.commit()
    return True
