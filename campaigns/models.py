"""Campaigns and their deliveries; the dev outbox where messages land when no provider is set."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from contacts.models import CHANNELS, _in
from envoi.extensions import db
from envoi.types import BigId, Json, UTCDateTime, utcnow


class OutboxMessage(db.Model):
    """A message the dev outbox channel 'sent': stored whole, shown in the admin UI.

    Written in its own transaction by the channel, like a real provider would accept it:
    a caller's rollback does not unsend it.
    """

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(8))
    to: Mapped[str] = mapped_column(sa.String(254))
    sender: Mapped[str | None] = mapped_column(sa.String(300))
    subject: Mapped[str | None] = mapped_column(sa.String(998))
    body: Mapped[str] = mapped_column(sa.Text)
    html: Mapped[str | None] = mapped_column(sa.Text)
    # The whole RFC 5322 message for email (headers included), as an SMTP server would get it.
    raw: Mapped[str | None] = mapped_column(sa.Text)
    data: Mapped[dict] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(f"channel IN {_in(CHANNELS)}", name="channel"),
        sa.Index("ix_outbox_messages_to_id", "to", "id"),
    )


CAMPAIGN_STATUSES = ("draft", "scheduled", "sending", "paused", "sent", "cancelled")
# queued: waiting (next_attempt_at says when); sending: leased by a worker until lease_until;
# the rest are final, except that Twilio callbacks move sent -> delivered/undelivered/failed.
DELIVERY_STATUSES = ("queued", "sending", "sent", "delivered", "undelivered", "failed", "bounced", "skipped")


class Campaign(db.Model):
    """What to send, to whom, when. The audience is a segment and/or a topic, minus exclusions."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    channel: Mapped[str] = mapped_column(sa.String(8))
    segment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("segments.id", ondelete="SET NULL"))
    topic_id: Mapped[int | None] = mapped_column(sa.ForeignKey("topics.id", ondelete="SET NULL"))
    exclude_segment_ids: Mapped[list] = mapped_column(Json, default=list)
    sender: Mapped[str | None] = mapped_column(sa.String(300))
    subject: Mapped[str | None] = mapped_column(sa.String(998))
    html: Mapped[str | None] = mapped_column(sa.Text)
    text: Mapped[str | None] = mapped_column(sa.Text)
    body: Mapped[str | None] = mapped_column(sa.Text)  # SMS
    status: Mapped[str] = mapped_column(sa.String(16), default="draft", server_default="draft")
    status_reason: Mapped[str | None] = mapped_column(sa.Text)  # why it paused itself, ...
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    targeted: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # Open pixel and click redirects (campaigns/tracking.py); off: links are left as written.
    track: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    author_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(f"channel IN {_in(CHANNELS)}", name="channel"),
        sa.CheckConstraint(f"status IN {_in(CAMPAIGN_STATUSES)}", name="status"),
        sa.Index("ix_campaigns_status_send_at", "status", "send_at"),
    )


class Delivery(db.Model):
    """One message of one campaign to one contact: the outbox row and the sent-message log.

    Unique per (campaign, contact): a contact is never queued twice. The contact's timeline
    reads mailings and SMS from here; there is no second write path.
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # A campaign's message, or (campaign_id NULL) a journey step's: unique per (run, step) then.
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    journey_run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("journey_runs.id", ondelete="CASCADE"))
    journey_step: Mapped[int | None] = mapped_column(sa.Integer)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(sa.String(8))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued", server_default="queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_id: Mapped[str | None] = mapped_column(sa.String(300))
    error: Mapped[str | None] = mapped_column(sa.Text)
    error_code: Mapped[int | None] = mapped_column(sa.Integer)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Times a lease expired on this row (its worker died mid-batch): the message may have left
    # before the crash, so a reclaimed row that is sent again is a possible duplicate.
    reclaims: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")

    __table_args__ = (
        sa.CheckConstraint(f"channel IN {_in(CHANNELS)}", name="channel"),
        sa.CheckConstraint(f"status IN {_in(DELIVERY_STATUSES)}", name="status"),
        sa.UniqueConstraint("campaign_id", "contact_id", name="uq_deliveries_campaign_id_contact_id"),
        sa.UniqueConstraint("journey_run_id", "journey_step", name="uq_deliveries_journey_run_id_journey_step"),
        sa.Index("ix_deliveries_campaign_id_status_id", "campaign_id", "status", "id"),
        sa.Index("ix_deliveries_contact_id_sent_at", "contact_id", "sent_at"),
        sa.Index("ix_deliveries_provider_id", "provider_id"),
    )


class ShortLink(db.Model):
    """A link of an SMS, shortened to BASE_URL/s/<code>: one per (campaign, contact, url), counted."""

    __tablename__ = "short_links"

    code: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(sa.Text)
    clicks: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_short_links_campaign_id", "campaign_id"),)
