"""The customer file: personal data, subscriptions and consents, actions and reactions."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from envoi.extensions import db
from envoi.types import BigId, Json, UTCDateTime, utcnow

LIFECYCLES = ("prospect", "customer", "former")
EMAIL_STATUSES = ("none", "pending", "confirmed", "unsubscribed", "bounced", "complained")
SMS_STATUSES = ("none", "pending", "confirmed", "unsubscribed", "invalid")
CHANNELS = ("email", "sms")
ATTRIBUTE_TYPES = ("string", "number", "boolean", "date")
ACTION_KINDS = ("mailing", "sms", "call", "meeting", "postal_mailing", "note", "signup",
                "confirmation", "unsubscribe", "preferences", "import", "merge", "erase", "automation")
CONSENT_KINDS = ("requested", "granted", "withdrawn")
CONSENT_METHODS = ("form", "import", "api", "sms_keyword", "link", "admin", "merge")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# Fields a user may write on a contact, in the order of the JSON shape and CSV columns.
PERSONAL_FIELDS = ("salutation", "first_name", "last_name", "birth_date", "gender", "address",
                   "postal_code", "city", "country", "language", "timezone", "company_name",
                   "sector", "headcount", "lifecycle", "source")


class Contact(db.Model):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Unique: see __table_args__ (uq_contacts_* on SQLite, ux_contacts_* on PostgreSQL).
    email: Mapped[str | None] = mapped_column(sa.String(254))
    phone: Mapped[str | None] = mapped_column(sa.String(20))
    salutation: Mapped[str | None] = mapped_column(sa.String(20))
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str | None] = mapped_column(sa.String(100))
    birth_date: Mapped[date | None] = mapped_column(sa.Date)
    gender: Mapped[str | None] = mapped_column(sa.String(20))
    address: Mapped[str | None] = mapped_column(sa.String(300))
    postal_code: Mapped[str | None] = mapped_column(sa.String(20))
    city: Mapped[str | None] = mapped_column(sa.String(100))
    country: Mapped[str | None] = mapped_column(sa.String(2))
    language: Mapped[str | None] = mapped_column(sa.String(10))
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    company_name: Mapped[str | None] = mapped_column(sa.String(200))
    sector: Mapped[str | None] = mapped_column(sa.String(100))
    headcount: Mapped[int | None] = mapped_column(sa.Integer)
    lifecycle: Mapped[str] = mapped_column(sa.String(16), default="prospect", server_default="prospect")
    source: Mapped[str | None] = mapped_column(sa.String(100))
    tags: Mapped[list] = mapped_column(Json, default=list)
    attributes: Mapped[dict] = mapped_column(Json, default=dict)
    email_status: Mapped[str] = mapped_column(sa.String(16), default="none", server_default="none")
    sms_status: Mapped[str] = mapped_column(sa.String(16), default="none", server_default="none")
    # When each status last changed: a consent older than an unsubscribe cannot undo it.
    email_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sms_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Purchase aggregates, kept by the purchase service so behavioural segments need no join.
    purchase_count: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    purchase_total: Mapped[Decimal] = mapped_column(sa.Numeric(14, 2), default=Decimal("0"), server_default="0")
    first_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_purchase_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The person refused open/click tracking (preference centre): links stay as written, no pixel.
    tracking_refused: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())

    topic_links: Mapped[list["ContactTopic"]] = relationship(back_populates="contact", cascade="all, delete-orphan")

    __table_args__ = (
        sa.CheckConstraint(f"lifecycle IN {_in(LIFECYCLES)}", name="lifecycle"),
        sa.CheckConstraint(f"email_status IN {_in(EMAIL_STATUSES)}", name="email_status"),
        sa.CheckConstraint(f"sms_status IN {_in(SMS_STATUSES)}", name="sms_status"),
        # Keyset pages of a filtered list: WHERE lower(city) = ? AND id > ? ORDER BY id.
        sa.Index("ix_contacts_city_id", sa.func.lower(sa.text("city")), "id"),
        sa.Index("ix_contacts_postal_code_id", "postal_code", "id"),
        sa.Index("ix_contacts_email_status_id", "email_status", "id"),
        sa.Index("ix_contacts_sms_status_id", "sms_status", "id"),
        sa.Index("ix_contacts_updated_at", "updated_at"),
        # The admin dashboard's counts by status: an index-only pass instead of a table scan.
        sa.Index("ix_contacts_statuses", "email_status", "sms_status",
                 postgresql_where=sa.text("erased_at IS NULL"), sqlite_where=sa.text("erased_at IS NULL")),
        # Email and phone are unique. On PostgreSQL each unique index and lower(last_name)'s index
        # use text_pattern_ops: byte-wise, so they answer equality (ON CONFLICT (email) included)
        # and the admin's search box (contacts.query.quick_search, prefix ranges) alike, whatever
        # the collation, with one index write per column (migration 0015). SQLite's BINARY
        # collation does both with plain indexes.
        sa.UniqueConstraint("email", name="uq_contacts_email").ddl_if(dialect="sqlite"),
        sa.UniqueConstraint("phone", name="uq_contacts_phone").ddl_if(dialect="sqlite"),
        sa.Index("ix_contacts_last_name", sa.func.lower(sa.text("last_name"))).ddl_if(dialect="sqlite"),
        sa.Index("ux_contacts_email", "email", unique=True,
                 postgresql_ops={"email": "text_pattern_ops"}).ddl_if(dialect="postgresql"),
        sa.Index("ux_contacts_phone", "phone", unique=True,
                 postgresql_ops={"phone": "text_pattern_ops"}).ddl_if(dialect="postgresql"),
        sa.Index("ix_contacts_last_name", sa.func.lower(sa.text("last_name")).label("lower_last_name"),
                 postgresql_ops={"lower_last_name": "text_pattern_ops"}).ddl_if(dialect="postgresql"),
    )


class Topic(db.Model):
    __tablename__ = "topics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ContactTopic(db.Model):
    """A contact's subscription to a topic (newsletter, offers ...)."""

    __tablename__ = "contact_topics"

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    topic_id: Mapped[int] = mapped_column(sa.ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True, index=True)
    subscribed: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    contact: Mapped[Contact] = relationship(back_populates="topic_links")
    topic: Mapped[Topic] = relationship(lazy="joined")


class AttributeDefinition(db.Model):
    """Custom attributes are declared with a type before contacts may carry them."""

    __tablename__ = "attribute_definitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    type: Mapped[str] = mapped_column(sa.String(16))
    label: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.CheckConstraint(f"type IN {_in(ATTRIBUTE_TYPES)}", name="type"),)


class ConsentEvent(db.Model):
    """Append-only proof of consent: what, when (server time), how, from where, with which text."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(sa.String(8))
    topic_id: Mapped[int | None] = mapped_column(sa.ForeignKey("topics.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    method: Mapped[str] = mapped_column(sa.String(16))
    source: Mapped[str | None] = mapped_column(sa.String(300))
    text: Mapped[str | None] = mapped_column(sa.Text)
    # When the person consented, as claimed by the source (imports, API); `recorded_at` is ours.
    consented_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    page_url: Mapped[str | None] = mapped_column(sa.String(1000))
    data: Mapped[dict] = mapped_column(Json, default=dict)

    __table_args__ = (
        sa.CheckConstraint(f"channel IN {_in(CHANNELS)}", name="channel"),
        sa.CheckConstraint(f"kind IN {_in(CONSENT_KINDS)}", name="kind"),
        sa.CheckConstraint(f"method IN {_in(CONSENT_METHODS)}", name="method"),
        sa.Index("ix_consent_events_contact_id_recorded_at", "contact_id", "recorded_at"),
        # The admin dashboard's signups of the last 30 days, read from the index alone.
        sa.Index("ix_consent_events_recorded_at", "recorded_at", "kind", "topic_id"),
    )


class Action(db.Model):
    """An interaction with the contact (call, meeting, note, signup, ...), with its author."""

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(sa.String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    author_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    data: Mapped[dict] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint(f"kind IN {_in(ACTION_KINDS)}", name="kind"),
        sa.Index("ix_actions_contact_id_occurred_at", "contact_id", "occurred_at"),
    )


class Purchase(db.Model):
    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(sa.String(100))
    name: Mapped[str | None] = mapped_column(sa.String(300))
    category: Mapped[str | None] = mapped_column(sa.String(100))
    quantity: Mapped[int] = mapped_column(sa.Integer, default=1)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    currency: Mapped[str] = mapped_column(sa.String(3))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    order_ref: Mapped[str | None] = mapped_column(sa.String(100))
    store: Mapped[str] = mapped_column(sa.String(16), default="web", server_default="web")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint("quantity > 0", name="quantity"),
        sa.CheckConstraint("store IN ('web', 'store', 'phone', 'other')", name="store"),
        # An order line is recorded once: resending the same order is idempotent.
        sa.UniqueConstraint("order_ref", "sku", name="uq_purchases_order_ref_sku"),
        sa.Index("ix_purchases_contact_id_occurred_at", "contact_id", "occurred_at"),
        sa.Index("ix_purchases_occurred_at", "occurred_at"),  # purchases of a period (reports, migration 0006)
        sa.Index("ix_purchases_sku_occurred_at", "sku", "occurred_at"),
        sa.Index("ix_purchases_category_occurred_at", "category", "occurred_at"),
    )


class Suppression(db.Model):
    """Keyed hash of an erased address or number: blocks its re-import, stores nothing readable."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(8))
    value_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    reason: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImportJob(db.Model):
    """A CSV import run by a worker; the database says what is still to do."""

    __tablename__ = "import_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    filename: Mapped[str] = mapped_column(sa.String(300))
    path: Mapped[str] = mapped_column(sa.String(1000))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    options: Mapped[dict] = mapped_column(Json, default=dict)
    rows: Mapped[int] = mapped_column(sa.Integer, default=0)
    created: Mapped[int] = mapped_column(sa.Integer, default=0)
    updated: Mapped[int] = mapped_column(sa.Integer, default=0)
    unchanged: Mapped[int] = mapped_column(sa.Integer, default=0)
    rejected: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Progress while running: the counters above and the bytes read are committed after each chunk.
    bytes_read: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    bytes_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    rejects_path: Mapped[str | None] = mapped_column(sa.String(1000))
    error: Mapped[str | None] = mapped_column(sa.Text)
    author_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="status"),
    )

    @property
    def percent(self) -> int | None:
        """How much of the file is imported, 0-100 (100 once done); None before the file was measured."""
        if self.status == "done":
            return 100
        if not self.bytes_total:
            return None
        return min(100, (self.bytes_read or 0) * 100 // self.bytes_total)


@event.listens_for(ConsentEvent, "before_update")
def _consent_is_append_only(mapper, connection, target):
    # Proof must not be rewritten; erasure scrubs through a bulk UPDATE that says why.
    raise RuntimeError("consent events are append-only")
