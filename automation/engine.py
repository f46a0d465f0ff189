"""The journey engine: the scheduler's tick and the workers' step runner.

`tick(now)` (every minute, scheduler process): exits journeys of contacts who unsubscribed from
their channel, enrolls new contacts (automation/triggers.py, one INSERT ... SELECT per
automation), then enqueues the due runs as ranges of ids. A run enqueued and not taken within
REQUEUE_AFTER (the broker lost the message, the worker died) is enqueued again.

`advance_batch(lo, hi, at)` (workers): claims the due runs of the range with one conditional
UPDATE (a lease: `lease_until`), then walks each run through its steps until a wait, the end, or
an exit. Every write of a run is fenced by its lease. A message is a `deliveries` row, unique per
(run, step), written 'sending' and committed before the send, recorded 'sent' together with the
run's move to the next step: a step already recorded is never sent again, and a worker killed
mid-send leaves at most that one message to be sent twice (counted in `reclaims`).
"""
from __future__ import annotations

import contextvars
import logging
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import sqlalchemy as sa
from flask import current_app

from automation.models import Automation, AutomationEvent, AutomationStep, JourneyRun, JourneyStep
from automation.triggers import enroll
from campaigns.models import Delivery
from contacts.models import Action, Contact, ContactTopic, Purchase
from envoi.extensions import db
from envoi.types import UTCDateTime, utcnow

log = logging.getLogger(__name__)

R = JourneyRun.__table__
REQUEUE_AFTER = timedelta(minutes=5)
FINAL = ("sent", "delivered", "undelivered", "failed", "bounced", "skipped")
EMAIL_GONE = ("unsubscribed", "bounced", "complained")
SMS_GONE = ("unsubscribed", "invalid")


def _cfg(key: str, default=None):
    return current_app.config.get(key, default)


def _ts(value: datetime):
    return sa.literal(value, UTCDateTime())


# ------------------------------------------------------------------ the scheduler's tick

def tick(now: datetime | None = None) -> dict:
    """One scheduler pass: exits, enrollment, enqueue of due runs. Safe to run twice."""
    now = now or utcnow()
    report = {"exited": exit_unsubscribed(now), "enrolled": 0, "enqueued": 0}
    active = db.session.scalars(sa.select(Automation).where(Automation.status == "active")
                                .order_by(Automation.id)).all()
    for automation in active:
        try:
            report["enrolled"] += enroll(automation, now)
        except Exception:  # noqa: BLE001  (one broken automation must not stop the others)
            db.session.rollback()
            log.exception("automation %s: enrollment failed", automation.id)
            continue
        db.session.execute(sa.update(Automation).where(Automation.id == automation.id)
                           .values(checked_at=now).execution_options(synchronize_session=False))
        db.session.commit()
    report["enqueued"] = enqueue_due(now)
    return report


def exit_unsubscribed(now: datetime) -> int:
    """Runs of contacts who left a channel their journey writes on (or were erased) end here."""
    c = Contact.__table__
    a = Automation.__table__
    gone = sa.exists().where(c.c.id == R.c.contact_id, sa.or_(
        c.c.erased_at.isnot(None),
        sa.and_(a.c.uses_email, c.c.email_status.in_(EMAIL_GONE)),
        sa.and_(a.c.uses_sms, c.c.sms_status.in_(SMS_GONE))))
    reason = sa.case((sa.exists().where(c.c.id == R.c.contact_id, c.c.erased_at.isnot(None)), "erased"),
                     else_="unsubscribed")
    stmt = (sa.update(R).where(R.c.status == "active", a.c.id == R.c.automation_id, gone)
            .values(status="exited", exit_reason=reason, finished_at=now, updated_at=now, lease_until=None))
    exited = db.session.execute(stmt.execution_options(synchronize_session=False)).rowcount or 0
    db.session.commit()
    return exited


def _due(now: datetime) -> list:
    return [R.c.status == "active", R.c.next_step_at <= _ts(now),
            sa.or_(R.c.lease_until.is_(None), R.c.lease_until < _ts(now)),
            R.c.automation_id.in_(sa.select(Automation.id).where(Automation.status == "active"))]


def enqueue_due(now: datetime) -> int:
    """Mark due runs not enqueued lately as enqueued now and send their id ranges to the workers."""
    batch = _cfg("AUTOMATION_BATCH_SIZE", 200)
    fresh = sa.or_(R.c.enqueued_at.is_(None), R.c.enqueued_at < _ts(now - REQUEUE_AFTER))
    db.session.execute(sa.update(R).where(*_due(now), fresh).values(enqueued_at=now)
                       .execution_options(synchronize_session=False))
    bucket = (sa.func.row_number().over(order_by=R.c.id) - 1) // batch
    sub = sa.select(R.c.id, bucket.label("b")).where(R.c.status == "active", R.c.enqueued_at == _ts(now)).subquery()
    ranges = db.session.execute(sa.select(sa.func.min(sub.c.id), sa.func.max(sub.c.id))
                                .group_by(sub.c.b).order_by(sub.c.b)).all()
    from envoi.tasks import enqueue_after_commit
    from workers.automation import advance_runs

    for lo, hi in ranges:
        enqueue_after_commit(advance_runs, lo, hi, now.isoformat())
    db.session.commit()
    return len(ranges)


# ------------------------------------------------------------------ templates

_extra: contextvars.ContextVar[dict] = contextvars.ContextVar("automation_context", default={})
_templates: dict = {}


def _template(step: AutomationStep, automation: Automation):
    """The step's content compiled in the campaigns' sandbox (cached per process)."""
    from campaigns.rendering import CompiledCampaign, _CONFIG_KEYS

    config = {k: current_app.config.get(k) for k in _CONFIG_KEYS}
    key = (step.id, step.updated_at, automation.sender, tuple(config.values()))
    found = _templates.get(key)
    if found is not None:
        return found

    class StepTemplate(CompiledCampaign):
        def context(self, contact) -> dict:
            return {**super().context(contact), **_extra.get()}

    cfg = step.config
    content = SimpleNamespace(id=0, channel=step.kind, sender=automation.sender, subject=cfg.get("subject"),
                              html=cfg.get("html"), text=cfg.get("text"), body=cfg.get("body"),
                              updated_at=step.updated_at, track=False)
    if len(_templates) > 256:
        _templates.clear()
    found = _templates[key] = StepTemplate(content, config)
    return found


def _trigger_data(automation: Automation, run) -> dict:
    """What templates read as `trigger`: the purchase, the API event's data, the consent."""
    kind = automation.trigger_type
    if run.ref_id is None:
        return {}
    if kind == "purchase":
        p = db.session.get(Purchase, run.ref_id)
        if p is None:
            return {}
        return {"sku": p.sku, "name": p.name, "category": p.category, "quantity": p.quantity,
                "amount": str(p.amount), "currency": p.currency, "order_ref": p.order_ref,
                "occurred_at": p.occurred_at.isoformat()}
    if kind == "event":
        e = db.session.get(AutomationEvent, run.ref_id)
        return {"name": e.name, "data": e.data, "occurred_at": e.occurred_at.isoformat()} if e else {}
    return {}


# ------------------------------------------------------------------ the workers' side

class LeaseLost(Exception):
    """Another worker took the run (our lease expired): stop touching it."""


class _Run:
    """A claimed run being walked; every write is fenced by the lease."""

    def __init__(self, row, lease_until: datetime):
        self.id, self.automation_id, self.contact_id = row.id, row.automation_id, row.contact_id
        self.step, self.ref_id, self.lease = row.step, row.ref_id, lease_until

    def update(self, **values) -> None:
        moved = db.session.execute(sa.update(R).where(R.c.id == self.id, R.c.lease_until == _ts(self.lease))
                                   .values(**values).execution_options(synchronize_session=False)).rowcount
        if not moved:
            raise LeaseLost(self.id)


def _claim(lo: int, hi: int, now: datetime, lease_until: datetime) -> list:
    limit = _cfg("AUTOMATION_BATCH_SIZE", 200)
    pick = sa.select(R.c.id).where(R.c.id >= lo, R.c.id <= hi, *_due(now)).order_by(R.c.id).limit(limit)
    if db.session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    # A CTE, evaluated once: as an IN (subquery) PostgreSQL may rescan it, and a rescan with
    # SKIP LOCKED ignores the LIMIT (seen here: a 100-row claim took 6,400 rows).
    picked = pick.cte("picked")
    stmt = (sa.update(R).where(R.c.id.in_(sa.select(picked.c.id)), *_due(now))
            .values(lease_until=lease_until, updated_at=now)
            .returning(R.c.id, R.c.automation_id, R.c.contact_id, R.c.step, R.c.ref_id))
    return sorted(db.session.execute(stmt).all())


def advance_batch(lo: int, hi: int, at: datetime | None = None) -> dict:
    """Take the due steps of the runs of ids [lo, hi]. `at` is the tick's clock (tests move it
    ahead); the later of it and the real time is used. Returns counts per outcome."""
    now = max(utcnow(), at) if at is not None else utcnow()
    lease = _cfg("DELIVERY_LEASE_SECONDS", 300)
    lease_until = now + timedelta(seconds=lease)
    rows = _claim(lo, hi, now, lease_until)
    db.session.commit()
    outcome: dict[str, int] = {}
    if not rows:
        return outcome
    deadline = time.monotonic() + lease * 0.8
    automations = {a.id: a for a in db.session.scalars(
        sa.select(Automation).where(Automation.id.in_({r.automation_id for r in rows})))}
    steps: dict[int, dict[int, AutomationStep]] = {}
    for step in db.session.scalars(sa.select(AutomationStep).where(
            AutomationStep.automation_id.in_(automations))):
        steps.setdefault(step.automation_id, {})[step.position] = step
    db.session.expunge_all()
    batch = _Batch([r.contact_id for r in rows], automations.values())
    session = db.session()
    session.expire_on_commit = False  # the batch's own rows: no reload after every commit
    try:
        for row in rows:
            run = _Run(row, lease_until)
            if time.monotonic() > deadline:  # give the rest back before the lease ends
                db.session.execute(sa.update(R).where(R.c.id == run.id, R.c.lease_until == _ts(lease_until))
                                   .values(lease_until=None, enqueued_at=None))
                db.session.commit()
                continue
            try:
                result = _walk(run, automations[run.automation_id], steps.get(run.automation_id, {}), now, batch)
            except LeaseLost:
                db.session.rollback()
                result = "lease lost"
            except Exception:
                db.session.rollback()
                log.exception("journey run %s failed; it is retried after its lease", run.id)
                raise
            outcome[result] = outcome.get(result, 0) + 1
    finally:
        session.expire_on_commit = True
    return outcome


class _Batch:
    """What a batch reads once: its contacts, erased addresses, topic subscriptions, rate tokens.
    Consent is as fresh as the batch (seconds), as in campaign dispatch."""

    def __init__(self, contact_ids: list[int], automations):
        from contacts.services import suppressed_values

        self.contacts = {c.id: c for c in db.session.scalars(sa.select(Contact).where(Contact.id.in_(contact_ids)))}
        contacts = self.contacts.values()
        self.suppressed = suppressed_values(emails=[c.email for c in contacts if c.email],
                                            phones=[c.phone for c in contacts if c.phone])
        topics = {a.topic_id for a in automations if a.topic_id is not None}
        self.subscribed = set(db.session.execute(sa.select(ContactTopic.contact_id, ContactTopic.topic_id).where(
            ContactTopic.contact_id.in_(contact_ids), ContactTopic.topic_id.in_(topics),
            ContactTopic.subscribed.is_(True))).all()) if topics else set()
        self.tokens = {"email": 0, "sms": 0}
        self.remaining = len(contact_ids)


def _action(run: _Run, automation: Automation, now: datetime, **data) -> None:
    db.session.add(Action(contact_id=run.contact_id, kind="automation", occurred_at=now, created_at=now,
                          data={"automation_id": automation.id, "automation": automation.name, "run_id": run.id,
                                **data}))


def _took(run: _Run, position: int, outcome: str, now: datetime) -> None:
    db.session.add(JourneyStep(run_id=run.id, automation_id=run.automation_id, position=position,
                               outcome=outcome, at=now))


def _release(run: _Run, now: datetime, **values) -> None:
    run.update(lease_until=None, enqueued_at=None, updated_at=now, **values)
    db.session.commit()


def _walk(run: _Run, automation: Automation, steps: dict, now: datetime, batch: _Batch) -> str:
    """Take the run's steps from its position until a wait, the end or an exit."""
    position = run.step
    for _ in range(len(steps) + 1):
        step = steps.get(position)
        if step is None:
            _action(run, automation, now, step=position, kind="end", outcome="done")
            _release(run, now, status="done", step=position, finished_at=now, next_step_at=None)
            return "done"
        if step.kind == "wait":
            contact = batch.contacts.get(run.contact_id)
            when = _wait_until(step.config, now, contact.timezone if contact else None)
            _took(run, position, "waited", now)
            _action(run, automation, now, step=position, kind="wait", until=when.isoformat())
            _release(run, now, step=position + 1, next_step_at=when)
            return "waiting"
        if step.kind == "branch":
            from segments.rules import compile_rules

            holds = bool(db.session.scalar(sa.select(sa.exists().where(
                Contact.id == run.contact_id, compile_rules(step.config["rule"], now=now)))))
            target = step.config.get("then" if holds else "else", "next" if holds else "exit")
            _took(run, position, "yes" if holds else "no", now)
            _action(run, automation, now, step=position, kind="branch", result=holds)
            if target == "exit":
                _release(run, now, status="exited", step=position, exit_reason="branch", finished_at=now)
                return "exited"
            position = len(steps) if target == "end" else (position + 1 if target == "next" else int(target))
            run.update(step=position, updated_at=now)
            continue
        result = _send(run, automation, step, position, now, batch)
        if result != "sent" and result != "failed":
            return result
        position += 1
    raise RuntimeError(f"journey run {run.id}: steps loop")


def _wait_until(config: dict, now: datetime, tz: str | None) -> datetime:
    when = now + timedelta(days=config.get("days", 0), hours=config.get("hours", 0),
                           minutes=config.get("minutes", 0))
    if config.get("until"):
        from campaigns.sms import zone

        hours, minutes = (int(x) for x in config["until"].split(":"))
        local = when.astimezone(zone(tz))
        target = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
        if target <= local:
            target = target + timedelta(days=1)
            target = target.replace(hour=hours, minute=minutes)  # same wall time across a DST change
        when = target.astimezone(timezone.utc)
    return when


def _skip_reason(automation: Automation, channel: str, contact: Contact | None, batch: _Batch) -> str | None:
    """Consent at send time: channel status, address, erasure, suppression, topic."""
    from campaigns.dispatch import _skip_reason as reason_for

    unsubscribed = set()
    if contact is not None and automation.topic_id is not None \
            and (contact.id, automation.topic_id) not in batch.subscribed:
        unsubscribed.add(contact.id)
    return reason_for(channel, contact, unsubscribed, batch.suppressed)


def _send(run: _Run, automation: Automation, step: AutomationStep, position: int, now: datetime,
          batch: _Batch) -> str:
    """Send the step's message once: returns sent, failed (go on), or why the run stopped here."""
    from campaigns import channels, ratelimit
    from campaigns.channels import PermanentError, TransientError
    from campaigns.dispatch import INVALID_NUMBER_CODES, UNSUBSCRIBED_CODES, _backoff
    from segments.models import MessageEvent

    channel = step.kind
    D = Delivery
    delivery = db.session.scalar(sa.select(D).where(D.journey_run_id == run.id, D.journey_step == position))
    if delivery is not None and delivery.status in FINAL:  # recorded before a crash: never again
        return "sent" if delivery.status in ("sent", "delivered", "undelivered") else "failed"
    if delivery is None:
        delivery = D(campaign_id=None, journey_run_id=run.id, journey_step=position, contact_id=run.contact_id,
                     channel=channel, status="queued", attempts=0, reclaims=0)
        db.session.add(delivery)
    elif delivery.status == "sending":  # its worker died mid-send: the message may have left
        delivery.reclaims += 1
    contact = batch.contacts.get(run.contact_id)
    reason = _skip_reason(automation, channel, contact, batch)
    if reason:
        delivery.status, delivery.error, delivery.updated_at, delivery.lease_until = "skipped", reason, now, None
        _took(run, position, "skipped", now)
        _action(run, automation, now, step=position, kind=channel, outcome="skipped", reason=reason)
        _release(run, now, status="exited", step=position, exit_reason=reason[:200], finished_at=now)
        return "exited"
    if channel == "sms":
        from campaigns.sms import next_allowed_time

        allowed = next_allowed_time(now, contact.timezone)
        if allowed > now:  # quiet hours where the contact lives: wait in place, not an attempt
            delivery.status, delivery.next_attempt_at, delivery.updated_at = "queued", allowed, now
            _release(run, now, step=position, next_step_at=allowed)
            return "quiet hours"
    if batch.tokens[channel] == 0:  # reserve for a chunk of the batch at once, as dispatch does
        rate = ratelimit.limiter(channel)
        want = max(1, min(rate.chunk, batch.remaining))
        reservation = rate.reserve(want, max_wait=5.0)
        if not reservation.granted:  # an hourly limit: back to waiting, not an attempt
            later = now + timedelta(seconds=reservation.wait)
            delivery.status, delivery.next_attempt_at, delivery.updated_at = "queued", later, now
            _release(run, now, step=position, next_step_at=later)
            return "rate limited"
        if reservation.wait > 0:
            time.sleep(reservation.wait)
        batch.tokens[channel] = want
    batch.tokens[channel] -= 1
    batch.remaining = max(0, batch.remaining - 1)
    delivery.status, delivery.attempts = "sending", delivery.attempts + 1
    delivery.lease_until, delivery.updated_at = run.lease, now
    run.update(step=position, updated_at=now)
    db.session.commit()  # the row says "sending" before anything leaves

    token = _extra.set({"trigger": _trigger_data(automation, run), "automation": {"id": automation.id,
                                                                               "name": automation.name}})
    try:
        template = _template(step, automation)
        if channel == "email":
            message = template.email(contact, delivery_id=delivery.id)
        else:
            body = template.sms(contact)
    except Exception as err:  # noqa: BLE001  (a template that fails on this contact's data)
        delivery.status, delivery.error, delivery.lease_until = "failed", f"rendering failed: {err}"[:2000], None
        _took(run, position, "failed", now)
        _action(run, automation, now, step=position, kind=channel, outcome="failed")
        run.update(step=position + 1, updated_at=now)
        db.session.commit()
        return "failed"
    finally:
        _extra.reset(token)
    max_attempts = _cfg("DELIVERY_MAX_ATTEMPTS", 5)
    try:
        if channel == "email":
            provider_id = channels.send_email(message)
        else:
            callback = _cfg("BASE_URL", "").rstrip("/") + f"/webhooks/twilio/status?d={delivery.id}"
            provider_id = channels.send_sms(contact.phone, body, status_callback=callback)
    except TransientError as err:
        delivery.error, delivery.error_code, delivery.lease_until = str(err)[:2000], err.code, None
        if delivery.attempts < max_attempts:
            when = now + timedelta(seconds=_backoff(delivery.attempts))
            delivery.status, delivery.next_attempt_at = "queued", when
            _release(run, now, step=position, next_step_at=when)
            return "retry"
        delivery.status = "failed"
        _took(run, position, "failed", now)
        run.update(step=position + 1, updated_at=now)
        db.session.commit()
        return "failed"
    except PermanentError as err:
        delivery.status, delivery.error, delivery.error_code = "failed", str(err)[:2000], err.code
        delivery.lease_until = None
        new_status = None
        if channel == "email" and str(err).startswith("recipient refused"):
            delivery.status, new_status = "bounced", "bounced"
        elif channel == "sms" and err.code in UNSUBSCRIBED_CODES:
            new_status = "unsubscribed"
        elif channel == "sms" and err.code in INVALID_NUMBER_CODES:
            new_status = "invalid"
        if new_status:
            setattr(contact, f"{channel}_status", new_status)
            setattr(contact, f"{channel}_status_at", now)
        _took(run, position, "failed", now)
        _action(run, automation, now, step=position, kind=channel, outcome=delivery.status)
        _release(run, now, status="exited", step=position, exit_reason=f"{channel} {delivery.status}",
                 finished_at=now)
        return "exited"
    delivery.status, delivery.sent_at, delivery.lease_until = "sent", max(utcnow(), now), None
    delivery.provider_id = (provider_id or None) and provider_id[:300]
    delivery.updated_at = now
    db.session.add(MessageEvent(contact_id=contact.id, campaign_id=None, channel=channel, kind="sent",
                                occurred_at=now, is_bot=False, data={"journey_run_id": run.id, "step": position}))
    _took(run, position, "sent", now)
    # Committed with the run's next move (a wait, usually): until then the row says 'sending', and
    # a crash in between leaves this one message to be sent again, counted in `reclaims`.
    run.update(step=position + 1, updated_at=now)
    return "sent"
