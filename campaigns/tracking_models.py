"""Tables of the tracking buffer (campaigns/tracking.py)."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from envoi.extensions import db
from envoi.types import UTCDateTime


class TrackingDrain(db.Model):
    """A batch of buffered hits written to message_events (in the same transaction as its events):
    a batch a dead drainer left in Redis is never written twice. Kept a day."""

    __tablename__ = "tracking_drains"

    batch: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    drained_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
