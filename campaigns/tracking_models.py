"""Tables of the tracking buffer (campaigns/tracking.py)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from contacts.models import Contact
from envoi.extensions import db
from envoi.types import UTCDateTime


class TrackingDrain(db.Model):
    """A batch of buffered hits written to message_events (in the same transaction as its events):
    a batch a dead drainer left in Redis is never written twice. Kept a day."""

    __tablename__ = "tracking_drains"

    batch: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    drained_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# The portfolio report (contacts/kpis.py) reads the customers' three RFM columns from this index alone:
# the RFM grid in one index-only pass, the "small customers with potential" ranked by purchase count.
_CUSTOMER = sa.and_(Contact.purchase_count > 0, Contact.erased_at.is_(None), Contact.last_purchase_at.isnot(None))
sa.Index("ix_contacts_rfm_portfolio", Contact.purchase_count, Contact.last_purchase_at, Contact.purchase_total,
         Contact.id, postgresql_where=_CUSTOMER, sqlite_where=_CUSTOMER)
