"""Channels: how a message leaves Envoi. One small interface, three kinds behind it.

    email: SMTP (ENVOI_SMTP_URL; one persistent connection per thread, reopened when lost)
           or the dev outbox (no SMTP_URL).
    sms:   Twilio (ENVOI_TWILIO_ACCOUNT_SID + _AUTH_TOKEN; the official client, ENVOI_TWILIO_API_BASE
           honoured) or the dev outbox.

A send either returns the provider's id for the message or raises TransientError (try again
later: SMTP 4xx, connection lost, Twilio 429/5xx) or PermanentError (never again to that
recipient: SMTP 5xx, Twilio 21211 invalid number, 21610 unsubscribed). Callers own retries.
"""
from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
from email.message import EmailMessage
from email.utils import parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app

from envoi.types import utcnow


class ChannelError(Exception):
    """A send that failed; `code` is the provider's (SMTP reply code, Twilio error code)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class TransientError(ChannelError):
    """Worth retrying later."""


class PermanentError(ChannelError):
    """Will fail again: record it and stop writing to this recipient."""


# ---------------------------------------------------------------- email

class OutboxEmail:
    """Dev outbox: stores the whole message in `outbox_messages`, in its own transaction."""

    name = "outbox"

    def send(self, msg: EmailMessage, before_data=None) -> str:
        if before_data is not None:
            before_data()
        to = parseaddr(str(msg["To"]))[1]
        html_part = msg.get_body(("html",)) if msg.is_multipart() else None
        text_part = msg.get_body(("plain",)) if msg.is_multipart() else msg
        row = {
            "channel": "email", "to": to, "sender": str(msg["From"] or ""), "subject": str(msg["Subject"] or ""),
            "body": text_part.get_content() if text_part is not None else "",
            "html": html_part.get_content() if html_part is not None else None,
            "raw": msg.as_string(), "data": {}, "created_at": utcnow(),
        }
        return str(_store_outbox(row))


def _address(value: str) -> str:
    """The address of a From/To value; a bare address as it is (parseaddr costs ~70 µs)."""
    value = value.strip()
    if value and not any(c in value for c in '<>",;:() \t'):
        return value
    match = _NAME_ADDR.fullmatch(value)  # Name <address>, the usual From
    if match:
        return match.group(1)
    return parseaddr(value)[1]


_NAME_ADDR = re.compile(r'[A-Za-z0-9 ._\'-]*<([^<>"(),;:\s@]+@[^<>"(),;:\s@]+)>')


class SmtpEmail:
    """SMTP with one persistent connection per thread (a pool per worker process)."""

    name = "smtp"

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.ssl else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query)
        self.starttls = query.get("starttls", ["0"])[0] in ("1", "true", "yes")
        self.timeout = timeout
        self._local = threading.local()

    def _connect(self) -> smtplib.SMTP:
        try:
            if self.ssl:
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=ssl.create_default_context())
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.starttls:
                    conn.starttls(context=ssl.create_default_context())
            conn.ehlo_or_helo_if_needed()  # the extensions (PIPELINING, SIZE) before the first message
            if self.user:
                conn.login(self.user, self.password or "")
        except smtplib.SMTPAuthenticationError as err:
            raise TransientError(f"SMTP login refused: {err.smtp_code} {_text(err.smtp_error)}", err.smtp_code) from None
        except (OSError, smtplib.SMTPException) as err:
            raise TransientError(f"cannot reach SMTP server {self.host}:{self.port}: {err}") from None
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _conn(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()

    def _drop(self, conn) -> None:
        """Close without QUIT: a message in its DATA phase is then discarded by the server."""
        self._local.conn = None
        conn.close()

    def send(self, msg: EmailMessage, before_data=None) -> str:
        """Send one message; `before_data()` (if given) runs once the server has accepted the
        envelope, before the message's content leaves: if it raises, the message is not sent
        (the connection is dropped in its DATA phase) and its exception goes to the caller."""
        from campaigns.rendering import header_value, wire_bytes

        # Bytes built once: send_message would flatten the message again (~2 ms).
        sender = _address(header_value(msg, "Sender") or header_value(msg, "From") or "")
        recipient = _address(header_value(msg, "To") or "")
        data = wire_bytes(msg)
        hook = [before_data] if before_data is not None else []
        for attempt in (1, 2):
            conn = self._conn()
            pipelined = conn.has_extn("pipelining") and sender.isascii() and recipient.isascii()
            try:
                if pipelined:
                    self._pipelined(conn, sender, recipient, data, hook)
                else:
                    while hook:
                        hook.pop()()
                    refused = conn.sendmail(sender, [recipient], data)
                    if refused:  # pragma: no cover - one recipient: refused means SMTPRecipientsRefused
                        code, text = next(iter(refused.values()))
                        raise _classify(code, f"recipient refused: {code} {_text(text)}")
            except _Disconnected as err:
                # A kept-alive connection the server closed before taking the message: reopen
                # once, then report. Once the content has left, it may have been delivered: no resend.
                self._drop(conn)
                if attempt == 2 or not err.before_content:
                    raise TransientError("SMTP server closed the connection") from None
                continue
            except smtplib.SMTPServerDisconnected:
                self._local.conn = None
                if attempt == 2:
                    raise TransientError("SMTP server closed the connection") from None
                continue
            except smtplib.SMTPRecipientsRefused as err:
                self._reset(conn)
                code, text = next(iter(err.recipients.values()))
                raise _classify(code, f"recipient refused: {code} {_text(text)}") from None
            except smtplib.SMTPResponseException as err:
                self._reset(conn)
                raise _classify(err.smtp_code, f"SMTP {err.smtp_code} {_text(err.smtp_error)}") from None
            except (OSError, smtplib.SMTPException) as err:
                self.close()
                raise TransientError(f"SMTP error: {err}") from None
            return header_value(msg, "Message-ID") or ""
        raise AssertionError("unreachable")

    def _pipelined(self, conn: smtplib.SMTP, sender: str, recipient: str, data: bytes, hook: list) -> None:
        """One transaction with PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, their three
        replies read together, then the content: two round trips instead of four."""
        size = f" SIZE={len(data)}" if conn.has_extn("size") else ""
        try:
            conn.sock.sendall(f"MAIL FROM:<{sender}>{size}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii"))
            mail, rcpt, go = conn.getreply(), conn.getreply(), conn.getreply()
        except (OSError, smtplib.SMTPServerDisconnected):
            raise _Disconnected(before_content=True) from None
        if go[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
            # A server that opens DATA without a recipient: drop the connection, nothing is delivered.
            self._drop(conn)
            go = (503, b"no valid recipient")
        if mail[0] != 250:
            raise smtplib.SMTPSenderRefused(mail[0], mail[1], sender)
        if rcpt[0] not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
        if go[0] != 354:
            raise smtplib.SMTPDataError(*go)
        while hook:
            try:
                hook.pop()()
            except BaseException:
                self._drop(conn)
                raise
        # Dot-stuffing: smtplib's re.sub(br'(?m)^\.', b'..'), as two replaces.
        body = data.replace(b"\n.", b"\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            conn.sock.sendall(body + b".\r\n")
            code, reply = conn.getreply()
        except (OSError, smtplib.SMTPServerDisconnected):
            raise _Disconnected(before_content=False) from None
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def _reset(self, conn) -> None:
        if self._local.conn is not conn:
            return  # dropped already
        try:
            conn.rset()
        except (OSError, smtplib.SMTPException):
            self._local.conn = None


class _Disconnected(Exception):
    def __init__(self, before_content: bool):
        super().__init__("SMTP server closed the connection")
        self.before_content = before_content


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _classify(code: int, message: str) -> ChannelError:
    return PermanentError(message, code) if 500 <= code < 600 else TransientError(message, code)


# ---------------------------------------------------------------- sms

# Twilio errors that will fail again for this number (not a reason to retry).
TWILIO_PERMANENT = {21211, 21214, 21217, 21407, 21408, 21606, 21610, 21612, 21614, 21401, 21421, 21604, 30003,
                    30004, 30005, 30006, 30007, 30008}


class OutboxSms:
    name = "outbox"

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        row = {"channel": "sms", "to": to, "sender": current_app.config.get("TWILIO_FROM") or "",
               "subject": None, "body": body, "html": None, "raw": None,
               "data": {"status_callback": status_callback} if status_callback else {}, "created_at": utcnow()}
        return f"OUTBOX{_store_outbox(row)}"


class TwilioSms:
    """The official client; `api_base` (ENVOI_TWILIO_API_BASE) replaces https://api.twilio.com."""

    name = "twilio"

    def __init__(self, sid: str, token: str, api_base: str, sender: str | None, messaging_service_sid: str | None):
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        base = api_base.rstrip("/")

        class _Rebased(TwilioHttpClient):
            def request(self, method, url, *args, **kwargs):
                if url.startswith("https://api.twilio.com"):
                    url = base + url[len("https://api.twilio.com"):]
                return super().request(method, url, *args, **kwargs)

        self.client = Client(sid, token, http_client=_Rebased(pool_connections=True, timeout=30))
        self.sender = sender
        self.messaging_service_sid = messaging_service_sid

    def send(self, to: str, body: str, status_callback: str | None = None) -> str:
        from twilio.base.exceptions import TwilioException, TwilioRestException

        kwargs = {"to": to, "body": body}
        if self.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.messaging_service_sid
        else:
            kwargs["from_"] = self.sender
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            message = self.client.messages.create(**kwargs)
        except TwilioRestException as err:
            if err.code in TWILIO_PERMANENT:
                raise PermanentError(f"Twilio {err.code}: {err.msg}", err.code) from None
            if err.status == 429 or err.status >= 500:
                raise TransientError(f"Twilio HTTP {err.status}: {err.msg}", err.code) from None
            raise PermanentError(f"Twilio HTTP {err.status} {err.code}: {err.msg}", err.code) from None
        except (TwilioException, OSError) as err:
            raise TransientError(f"cannot reach Twilio: {err}") from None
        return message.sid


# ---------------------------------------------------------------- wiring

def _store_outbox(row: dict) -> int:
    from campaigns.models import OutboxMessage
    from envoi.extensions import db

    with db.engine.begin() as conn:
        return conn.execute(OutboxMessage.__table__.insert().returning(OutboxMessage.id), row).scalar_one()


_channels: dict = {}
_lock = threading.Lock()


def email_channel():
    """The process's email channel for the current config (SMTP, else the dev outbox)."""
    url = current_app.config.get("SMTP_URL")
    key = ("email", url)
    if key not in _channels:
        with _lock:
            _channels.setdefault(key, SmtpEmail(url) if url else OutboxEmail())
    return _channels[key]


def sms_channel():
    """The process's SMS channel for the current config (Twilio, else the dev outbox)."""
    cfg = current_app.config
    sid, token = cfg.get("TWILIO_ACCOUNT_SID"), cfg.get("TWILIO_AUTH_TOKEN")
    key = ("sms", sid, token, cfg.get("TWILIO_API_BASE"), cfg.get("TWILIO_FROM"), cfg.get("TWILIO_MESSAGING_SERVICE_SID"))
    if key not in _channels:
        with _lock:
            if key not in _channels:
                _channels[key] = (TwilioSms(sid, token, cfg["TWILIO_API_BASE"], cfg.get("TWILIO_FROM"),
                                            cfg.get("TWILIO_MESSAGING_SERVICE_SID")) if sid and token else OutboxSms())
    return _channels[key]


def send_email(msg: EmailMessage, before_data=None) -> str:
    """`before_data()`: called once the message is about to leave (SMTP: once the server took its
    envelope); if it raises, the message is not sent and the exception is the caller's."""
    return email_channel().send(msg, before_data)


def send_sms(to: str, body: str, status_callback: str | None = None) -> str:
    return sms_channel().send(to, body, status_callback)
