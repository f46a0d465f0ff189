"""Channels against a real SMTP server (aiosmtpd) and a fake Twilio API on loopback."""
import pytest
import sqlalchemy as sa

from campaigns.channels import PermanentError, TransientError, email_channel, send_email, send_sms, sms_channel
from campaigns.mime import compose
from campaigns.models import OutboxMessage
from envoi.extensions import db


def test_smtp_delivers_multipart_and_keeps_its_connection(ctx, smtp_server):
    for n in range(3):
        send_email(compose(f"p{n}@example.org", "Bonjour é", "texte é", "<p>html é</p>"))
    messages = smtp_server.wait_for(3)
    assert [m["to"] for m in messages] == [["p0@example.org"], ["p1@example.org"], ["p2@example.org"]]
    msg = messages[0]["message"]
    assert msg["Subject"] == "Bonjour é"
    assert msg.get_body(("plain",)).get_content().strip() == "texte é"
    assert msg.get_body(("html",)).get_content().strip() == "<p>html é</p>"
    assert b"\r\n" in messages[0]["raw"] and b"\n\n" not in messages[0]["raw"].replace(b"\r\n", b"")
    assert smtp_server.connections == 1  # one persistent connection for the three messages
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
