"""Channels against a real SMTP server (aiosmtpd) and a fake Twilio API on loopback."""
import pytest
import sqlalchemy as sa

from campaigns.channels import PermanentError, TransientError, email_channel, send_email, send_sms, sms_channel
from campaigns.mime import compose
from campaigns.models import OutboxMessage
from envoi.extensions import db


def test_smtp_delivers_multipart_and_keeps_its_connection(ctx, smtp_server):
    connections = smtp_server.connections  # the server counts since the session began
    for n in range(3):
        send_email(compose(f"p{n}@example.org", "Bonjour é", "texte é", "<p>html é</p>"))
    messages = smtp_server.wait_for(3)
    assert [m["to"] for m in messages] == [["p0@example.org"], ["p1@example.org"], ["p2@example.org"]]
    msg = messages[0]["message"]
    assert msg["Subject"] == "Bonjour é"
    assert msg.get_body(("plain",)).get_content().strip() == "texte é"
    assert msg.get_body(("html",)).get_content().strip() == "<p>html é</p>"
    assert b"\r\n" in messages[0]["raw"] and b"\n\n" not in messages[0]["raw"].replace(b"\r\n", b"")
    # one persistent connection for the three messages (or the one an earlier test left open, reused)
    assert smtp_server.connections - connections <= 1
    assert len({m["message"]["Message-ID"] for m in messages}) == 3


def test_smtp_envelope_comes_from_the_headers_with_or_without_display_names(ctx, smtp_server):
    from campaigns.rendering import build_message

    cases = [("plain@example.org", "Envoi <news@example.org>", "news@example.org"),
             ("Zoé Écrit <zoe@example.org>", "\"Boutique, Lyon\" <shop@example.org>", "shop@example.org"),
             ("bare@example.org", "bounce@example.org", "bounce@example.org")]
    for to, sender, envelope_from in cases:
        msg = build_message(to, "Objet", "texte", None, sender=sender, message_id="<m@example.org>")
        assert send_email(msg) == "<m@example.org>"
    received = smtp_server.wait_for(3)
    assert [(m["from"], m["to"]) for m in received] == [
        ("news@example.org", ["plain@example.org"]), ("shop@example.org", ["zoe@example.org"]),
        ("bounce@example.org", ["bare@example.org"])]
    assert received[1]["message"]["To"] == "Zoé Écrit <zoe@example.org>"


def test_smtp_refusals_are_classified(ctx, smtp_server):
    smtp_server.refuse["gone@example.org"] = (550, "5.1.1 no such user")
    smtp_server.refuse["later@example.org"] = (451, "4.3.0 try later")
    with pytest.raises(PermanentError) as perm:
        send_email(compose("gone@example.org", "s", "t"))
    assert perm.value.code == 550
    with pytest.raises(TransientError) as temp:
        send_email(compose("later@example.org", "s", "t"))
    assert temp.value.code == 451
    send_email(compose("fine@example.org", "s", "t"))  # the connection is still usable
    assert [m["to"] for m in smtp_server.wait_for(1)] == [["fine@example.org"]]


def test_smtp_unreachable_is_transient(app, ctx):
    from tests.conftest import configured, free_port

    with configured(app, SMTP_URL=f"smtp://127.0.0.1:{free_port()}"):
        with pytest.raises(TransientError):
            email_channel().send(compose("a@example.org", "s", "t"))


def test_dev_outbox_stores_email_and_sms(app, ctx):
    from tests.conftest import configured

    with configured(app, SMTP_URL=None, TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None):
        send_email(compose("a@example.org", "Sujet", "corps", "<b>corps</b>"))
        sid = send_sms("+33612345678", "Promo STOP au 36111")
    rows = db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [(r.channel, r.to, r.subject) for r in rows] == [("email", "a@example.org", "Sujet"),
                                                            ("sms", "+33612345678", None)]
    assert rows[0].body.strip() == "corps" and rows[0].html.strip() == "<b>corps</b>"
    assert "Subject: Sujet" in rows[0].raw
    assert sid == f"OUTBOX{rows[1].id}"


def test_twilio_sends_through_the_official_client_to_the_configured_base(ctx, fake_twilio):
    sid = send_sms("+33612345678", "Bonjour", status_callback="http://127.0.0.1:5000/webhooks/twilio/status")
    assert sid.startswith("SM")
    assert fake_twilio.messages == [{"To": "+33612345678", "Body": "Bonjour", "From": "+33700000000",
                                     "StatusCallback": "http://127.0.0.1:5000/webhooks/twilio/status", "sid": sid}]


@pytest.mark.parametrize("status,code,error", [(400, 21211, PermanentError), (400, 21610, PermanentError),
                                               (429, 20429, TransientError), (503, 20500, TransientError)])
def test_twilio_errors_are_classified(ctx, fake_twilio, status, code, error):
    fake_twilio.fail["+33600000001"] = (status, code)
    with pytest.raises(error) as caught:
        sms_channel().send("+33600000001", "x")
    assert caught.value.code == code


# ---------------------------------------------------------------- SMTP PIPELINING (RFC 2920)

class _PipelineOnlyServer:
    """A raw SMTP server that answers MAIL, RCPT and DATA only once all three have arrived: a client
    that waits for MAIL's reply before sending RCPT never gets one (its read times out)."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        buf = b""

        def until(marker: bytes) -> bytes:
            nonlocal buf
            while marker not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            head, _, buf = buf.partition(marker)
            return head + marker

        try:
            conn.sendall(b"220 test ESMTP\r\n")
            until(b"\r\n")  # EHLO
            conn.sendall(b"250-test\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n")
            while True:
                envelope = until(b"DATA\r\n")  # MAIL, RCPT and DATA before any reply
                conn.sendall(b"250 sender ok\r\n250 rcpt ok\r\n354 go on\r\n")
                self.received.append(envelope + until(b"\r\n.\r\n"))
                conn.sendall(b"250 queued\r\n")
        except (OSError, ConnectionError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.sock.close()


def test_smtp_pipelines_mail_rcpt_and_data_when_the_server_announces_it(app, ctx):
    from tests.conftest import configured

    server = _PipelineOnlyServer()
    try:
        with configured(app, SMTP_URL=f"smtp://127.0.0.1:{server.port}"):
            for n in range(2):
                send_email(compose(f"p{n}@example.org", "Sujet", ".point en tête\n..deux\ntexte"))
            email_channel().close()
    finally:
        server.stop()
    assert len(server.received) == 2
    first = server.received[0]
    assert first.startswith(b"MAIL FROM:<") and b" SIZE=" in first.split(b"\r\n")[0]
    assert first.split(b"\r\n")[1:3] == [b"RCPT TO:<p0@example.org>", b"DATA"]
    assert b"\r\n=2Epoint" in first or b"\r\n..point" in first  # a leading dot is never sent bare
    assert first.endswith(b"\r\n.\r\n")


def test_pipelined_and_plain_smtp_deliver_the_same_bytes(app, ctx):
    from campaigns.rendering import build_message, wire_bytes
    from tests.conftest import configured
    from tests.fakes import SmtpServer

    msg = build_message("Zoé <zoe@example.org>", "Objet é", ".ligne\ntexte é\n" * 200,
                        "<p>html é</p>\n.<b>x</b>\n" * 300, sender="Envoi <news@example.org>")
    received = {}
    for pipelining in (True, False):
        server = SmtpServer(pipelining=pipelining).start()
        try:
            with configured(app, SMTP_URL=server.url):
                send_email(msg)
                email_channel().close()
            (received[pipelining],) = server.wait_for(1)
        finally:
            server.stop()
    assert received[True]["raw"] == received[False]["raw"]
    assert (received[True]["from"], received[True]["to"]) == ("news@example.org", ["zoe@example.org"])
    assert received[True]["raw"].replace(b"\r\n", b"") == wire_bytes(msg).replace(b"\r\n", b"")
    text = received[True]["message"].get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n").startswith(".ligne\ntexte é\n")


def test_a_failing_before_data_hook_sends_nothing_and_the_next_message_goes(ctx, smtp_server):
    calls = []

    def refuse():
        calls.append("hook")
        raise LookupError("no mark")

    with pytest.raises(LookupError):
        send_email(compose("held@example.org", "s", "t"), before_data=refuse)
    assert calls == ["hook"]
    send_email(compose("next@example.org", "s", "t"), before_data=lambda: calls.append("ok"))
    assert [m["to"] for m in smtp_server.wait_for(1)] == [["next@example.org"]]
    assert calls == ["hook", "ok"]


def test_a_refused_recipient_in_a_pipeline_does_not_call_the_hook(ctx, smtp_server):
    smtp_server.refuse["gone@example.org"] = (550, "5.1.1 no such user")
    calls = []
    with pytest.raises(PermanentError) as perm:
        send_email(compose("gone@example.org", "s", "t"), before_data=lambda: calls.append(1))
    assert perm.value.code == 550 and str(perm.value).startswith("recipient refused: 550")
    assert calls == []
    send_email(compose("fine@example.org", "s", "t"))
    assert [m["to"] for m in smtp_server.wait_for(1)] == [["fine@example.org"]]
