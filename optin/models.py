"""Signup forms: what a form collects, for which channels and topics, with which consent text."""
from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from envoi.extensions import db
from envoi.types import BigId, Json, UTCDateTime, utcnow

POPUP_TRIGGERS = ("inline", "delay", "exit", "scroll")


class Form(db.Model):
    """A hosted / embeddable signup form. A signup can only set what the form collects."""

    __tablename__ = "forms"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    # Contact fields ("email", "phone", personal fields) and declared attribute keys it collects.
    fields: Mapped[list] = mapped_column(Json, default=list)
    attributes: Mapped[list] = mapped_column(Json, default=list)
    channels: Mapped[list] = mapped_column(Json, default=list)
    topics: Mapped[list] = mapped_column(Json, default=list)
    double_opt_in: Mapped[bool] = mapped_column(sa.Boolean, default=True, server_default=sa.true())
    consent_text: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    # Bumped by the marketer when the text changes; kept with every consent as proof.
    consent_version: Mapped[str] = mapped_column(sa.String(50), default="1", server_default="1")
    redirect_url: Mapped[str | None] = mapped_column(sa.String(1000))
    confirm_redirect_url: Mapped[str | None] = mapped_column(sa.String(1000))
    allowed_origins: Mapped[list] = mapped_column(Json, default=list)
    popup: Mapped[dict] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


EMBED_SOURCES = ("inline", "popup")  # how the embed script showed the form
VIEW_SOURCES = ("hosted", *EMBED_SOURCES)


class FormView(db.Model):
    """How many times a form was shown on a UTC day, and where: the hosted page, or the embed script
    inline or as a popup. Counters only: nothing about the visitor is kept."""

    __tablename__ = "form_views"

    form_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("forms.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    source: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    views: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
