"""Automations (journeys), their steps, the runs of contacts through them, API events.

A run is one contact going through one automation for one trigger occurrence: unique per
(automation, contact, occurrence key), so a birthday enters once a year and a purchase
follow-up once per order. `step` is the position of the next step to take, `next_step_at`
when it is due; a worker takes a due run under a lease (`lease_until`), so a lost queue or a
restart neither skips nor repeats a step. Every step taken is a `journey_steps` row (unique per
run and position: stats and idempotence) and an Action on the contact's timeline; every message
is a `deliveries` row (journey_run_id, journey_step).
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from contacts.models import _in
from envoi.extensions import db
from envoi.types import BigId, Json, UTCDateTime, utcnow

AUTOMATION_STATUSES = ("draft", "active", "paused")
TRIGGER_TYPES = ("subscription", "anniversary", "purchase", "winback", "segment", "tag", "event")
REENTRY = ("per_occurrence", "once", "not_while_active")
STEP_KINDS = ("email", "sms", "wait", "branch")
RUN_STATUSES = ("active", "done", "exited")


class Automation(db.Model):
    __tablename__ = "automations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16), default="draft", server_default="draft")
    trigger: Mapped[dict] = mapped_column(Json)
    trigger_type: Mapped[str] = mapped_column(sa.String(16))
    audience: Mapped[dict | None] = mapped_column(Json)  # a segment rule, or none
    topic_id: Mapped[int | None] = mapped_column(sa.ForeignKey("topics.id", ondelete="SET NULL"))
    reentry: Mapped[str] = mapped_column(sa.String(20), default="per_occurrence", server_default="per_occurrence")
    sender: Mapped[str | None] = mapped_column(sa.String(300))
    # Channels its send steps use: an unsubscribe from one exits the contact from the journey.
    uses_email: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    uses_sms: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Event-like triggers (consents, purchases, API events, lapses) were evaluated up to here.
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(f"status IN {_in(AUTOMATION_STATUSES)}", name="status"),
        sa.CheckConstraint(f"trigger_type IN {_in(TRIGGER_TYPES)}", name="trigger_type"),
        sa.CheckConstraint(f"reentry IN {_in(REENTRY)}", name="reentry"),
    )


class AutomationStep(db.Model):
    """One step at `position` (0, 1, ...): email/sms content, a wait, or a branch on a rule."""

    __tablename__ = "automation_steps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    automation_id: Mapped[int] = mapped_column(sa.ForeignKey("automations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[str] = mapped_column(sa.String(8))
    config: Mapped[dict] = mapped_column(Json, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(f"kind IN {_in(STEP_KINDS)}", name="kind"),
        sa.UniqueConstraint("automation_id", "position", name="uq_automation_steps_automation_id_position"),
    )


class JourneyRun(db.Model):
    __tablename__ = "journey_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    automation_id: Mapped[int] = mapped_column(sa.ForeignKey("automations.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    occurrence_key: Mapped[str] = mapped_column(sa.String(200))
    # The row behind the occurrence (purchase, consent event, API event): templates read it as `trigger`.
    ref_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(8), default="active", server_default="active")
    step: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    exit_reason: Mapped[str | None] = mapped_column(sa.String(200))
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(f"status IN {_in(RUN_STATUSES)}", name="status"),
        sa.UniqueConstraint("automation_id", "contact_id", "occurrence_key",
                            name="uq_journey_runs_automation_id_contact_id_occurrence_key"),
        sa.Index("ix_journey_runs_status_next_step_at", "status", "next_step_at"),
        sa.Index("ix_journey_runs_contact_id_status", "contact_id", "status"),
    )


class JourneyStep(db.Model):
    """A step a run took (once per run and position: steps only go forward)."""

    __tablename__ = "journey_steps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("journey_runs.id", ondelete="CASCADE"))
    automation_id: Mapped[int] = mapped_column(sa.ForeignKey("automations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(16))  # sent, skipped, failed, waited, yes, no
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("run_id", "position", name="uq_journey_steps_run_id_position"),
        sa.Index("ix_journey_steps_automation_id_position", "automation_id", "position"),
    )


class AutomationEvent(db.Model):
    """An event posted through the API (`POST /api/v1/events`): a name, a contact, data."""

    __tablename__ = "automation_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    data: Mapped[dict] = mapped_column(Json, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.Index("ix_automation_events_name_created_at", "name", "created_at"),)
