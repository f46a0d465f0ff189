"""Compose RFC 5322 messages: multipart text + HTML, CRLF on the wire, a unique Message-ID."""
from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr

from flask import current_app

from envoi.types import utcnow


def message_id_domain() -> str:
    sender = parseaddr(current_app.config["EMAIL_FROM"])[1]
    return sender.rpartition("@")[2] or "localhost"


def compose(to: str, subject: str, text: str, html: str | None = None, *, sender: str | None = None,
            headers: dict | None = None, message_id: str | None = None) -> EmailMessage:
    """One message ready for a channel; `headers` are added as given (List-Unsubscribe ...)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender or current_app.config["EMAIL_FROM"]
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id or make_msgid(domain=message_id_domain())
    msg["MIME-Version"] = "1.0"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text, cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg


__all__ = ["compose", "message_id_domain", "Address"]
