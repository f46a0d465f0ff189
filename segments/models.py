"""Segments (saved rules) and the message events that engagement rules read."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from contacts.models import CHANNELS, Contact, _in
from envoi.extensions import db
from envoi.types import BigId, Json, UTCDateTime, utcnow

MESSAGE_EVENT_KINDS = ("sent", "delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")


class Segment(db.Model):
    """A named rule over the contacts; membership is computed live, never stored."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    rules: Mapped[dict] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MessageEvent(db.Model):
    """What happened to one message sent to one contact: sent, delivered, opened, clicked ...

    Campaign dispatch will write `sent` (and `bounced` on a synchronous refusal); tracking
    (open pixel, click redirects, provider webhooks, unsubscribe links) will write the others.
    `campaign_id` gets its foreign key when the campaigns table exists. `is_bot` marks
    machine events (mail-privacy prefetch opens, link scanners): engagement rules ignore them.
    Engagement segments read this table only through (contact_id, kind, occurred_at).
    """

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    channel: Mapped[str] = mapped_column(sa.String(8))
    kind: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    is_bot: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    data: Mapped[dict] = mapped_column(Json, default=dict)

    __table_args__ = (
        sa.CheckConstraint(f"channel IN {_in(CHANNELS)}", name="channel"),
        sa.CheckConstraint(f"kind IN {_in(MESSAGE_EVENT_KINDS)}", name="kind"),
        sa.Index("ix_message_events_contact_id_kind_occurred_at", "contact_id", "kind", "occurred_at"),
        # Campaign reports (unique human opens and clicks, timeline) read only this index (migration 0006).
        sa.Index("ix_message_events_campaign_id_kind_is_bot", "campaign_id", "kind", "is_bot", "contact_id",
                 "occurred_at"),
    )



def insert_events(conn, rows: list[dict]) -> None:
    """Write message_events rows (dicts with the same keys) as multi-row INSERTs of 1,000 rows.

    With RETURNING, SQLAlchemy batches the rows into multi-row INSERTs ("insertmanyvalues"); a plain
    executemany would send one INSERT a row, and on PostgreSQL every statement fires the tracking
    rollup triggers (migration 0012) on its own. (An INSERT ... VALUES of a list is compiled anew each
    time: 2.0 s for 5,000 rows against 0.7 s this way.)"""
    if rows:
        table = MessageEvent.__table__
        conn.execute(sa.insert(table).returning(table.c.id), rows)

# RFM quintiles rank customers in (value, id) order; these partial indexes give that order
# without a sort, so the four quintile boundaries cost one index-only scan per dimension.
_CUSTOMER = sa.and_(Contact.purchase_count > 0, Contact.erased_at.is_(None), Contact.last_purchase_at.isnot(None))
for _name, _col in (("recency", Contact.last_purchase_at), ("frequency", Contact.purchase_count),
                    ("monetary", Contact.purchase_total)):
    sa.Index(f"ix_contacts_rfm_{_name}", _col, Contact.id, postgresql_where=_CUSTOMER, sqlite_where=_CUSTOMER)
