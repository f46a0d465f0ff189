"""Tables of the tracking buffer (campaigns/tracking.py)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from campaigns.models import Delivery
from contacts.models import Contact
from envoi.extensions import db
from envoi.types import UTCDateTime
from segments.models import MessageEvent


class TrackingDrain(db.Model):
    """A batch of buffered hits written to message_events (in the same transaction as its events):
    a batch a dead drainer left in Redis is never written twice. Kept a day."""

    __tablename__ = "tracking_drains"

    batch: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    drained_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SmsLink(db.Model):
    """A URL of a campaign's SMS, numbered within the campaign: a short code carries the number
    (campaigns/tracking.py sms_code), so following it needs no row of its own. Never changes."""

    __tablename__ = "sms_links"

    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    url_hash: Mapped[str] = mapped_column(sa.String(64))
    url: Mapped[str] = mapped_column(sa.Text)

    __table_args__ = (sa.UniqueConstraint("campaign_id", "url_hash"),)


# The portfolio report (contacts/kpis.py) reads the customers' three RFM columns from this index alone:
# the RFM grid in one index-only pass, the "small customers with potential" ranked by purchase count.
_CUSTOMER = sa.and_(Contact.purchase_count > 0, Contact.erased_at.is_(None), Contact.last_purchase_at.isnot(None))
sa.Index("ix_contacts_rfm_portfolio", Contact.purchase_count, Contact.last_purchase_at, Contact.purchase_total,
         Contact.id, postgresql_where=_CUSTOMER, sqlite_where=_CUSTOMER)


# ---------------------------------------------------------------- rollups of the campaign report
#
# Kept by PostgreSQL triggers on message_events (migration 0012), in the transaction that writes,
# deletes or updates the events, whoever does it (the tracking drain, a contact's erasure or deletion,
# a merge of duplicates): the report reads a few rows instead of a campaign's hundreds of thousands
# of events. Only the human ("is_bot" false) opens and clicks of campaigns, except the bot counts.
# SQLite has the tables but no triggers: the report computes from message_events there.

class TrackingCampaignCount(db.Model):
    """A campaign's opens and clicks: all of them, unique contacts, and the bots'."""

    __tablename__ = "tracking_campaign_counts"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    unique_opens: Mapped[int] = mapped_column(sa.BigInteger, default=0)   # contacts with an open or a click
    unique_clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    opens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bot_opens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    bot_clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class TrackingContactCount(db.Model):
    """One contact's human opens and clicks of a campaign: the unique counts move when these leave 0 or reach it."""

    __tablename__ = "tracking_contact_counts"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    opens: Mapped[int] = mapped_column(sa.Integer, default=0)
    clicks: Mapped[int] = mapped_column(sa.Integer, default=0)


class TrackingTimeline(db.Model):
    """Human opens and clicks per bucket of the report's timeline (bucket < 48: hour since `origin`, the
    campaign's started_at when the event was written; then days). Rows of another origin than the
    campaign's own make the report compute its timeline from the events."""

    __tablename__ = "tracking_timeline"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    origin: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    bucket: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    opens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class TrackingLink(db.Model):
    """Human clicks per URL of a campaign (url_key: md5 of the URL, "-" for none), and the contacts who clicked."""

    __tablename__ = "tracking_links"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    url_key: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    url: Mapped[str | None] = mapped_column(sa.Text)
    clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    unique_clicks: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class TrackingLinkContact(db.Model):
    """One contact's human clicks on one URL of a campaign."""

    __tablename__ = "tracking_link_contacts"

    campaign_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    url_key: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    clicks: Mapped[int] = mapped_column(sa.Integer, default=0)


# Attribution (campaigns/reports.py attributed_campaign) looks up, for each purchase, the contact's latest
# human click and latest message sent in the window before it: with these two, each lookup is one step
# down an index, in order, with no visit to the table (before: the rows of every click or delivery of the
# contact in the window were read from the table to test is_bot or status, then sorted).
_HUMAN_CLICK = sa.and_(MessageEvent.kind == "clicked", MessageEvent.is_bot.is_(sa.false()),
                       MessageEvent.campaign_id.isnot(None))
sa.Index("ix_message_events_human_clicks", MessageEvent.contact_id, MessageEvent.occurred_at, MessageEvent.id,
         MessageEvent.campaign_id, postgresql_where=_HUMAN_CLICK, sqlite_where=_HUMAN_CLICK)
_SENT = sa.and_(Delivery.status.in_(("sent", "delivered", "undelivered")), Delivery.sent_at.isnot(None))
sa.Index("ix_deliveries_contact_id_sent", Delivery.contact_id, Delivery.sent_at, Delivery.id, Delivery.campaign_id,
         postgresql_where=_SENT, sqlite_where=_SENT)
