"""POST /webhooks/twilio/inbound: STOP/START/HELP keywords, signature checked first."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from contacts import services as contacts
from contacts.models import Action, ConsentEvent, Contact
from envoi.extensions import db
from optin.twilio import sign_for_tests
from tests.conftest import configured

TOKEN = "inbound-test-token"
NUMBER = "+33611223344"


@pytest.fixture
def twilio_app(app):
    with configured(app, TWILIO_AUTH_TOKEN=TOKEN):
        yield app


def _send(app, client, body, *, sign=True, number=NUMBER):
    params = {"From": number, "To": "+33700000000", "Body": body, "MessageSid": "SM" + "1" * 32}
    url = app.config["BASE_URL"] + "/webhooks/twilio/inbound"
    signature = sign_for_tests(url, params, TOKEN if sign else "forged-token")
    return client.post("/webhooks/twilio/inbound", data=params, headers={"X-Twilio-Signature": signature})


def _subscriber(app, status="confirmed"):
    with app.app_context():
        contact, _ = contacts.upsert_contact({"phone": NUMBER, "sms_status": "confirmed", "consent": {
            "source": "test", "at": "2024-01-01T00:00:00Z"}})
        contact.sms_status = status
        db.session.commit()
        return contact.id


def _status(app, cid):
    with app.app_context():
        return db.session.get(Contact, cid).sms_status


@pytest.mark.parametrize("word", ["STOP", "stop", "  Stop  ", "STOPALL", "unsubscribe", "Cancel", "END", "quit",
                                  "REVOKE", "optout"])
def test_stop_words_unsubscribe(twilio_app, client, word):
    cid = _subscriber(twilio_app)
    resp = _send(twilio_app, client, word)
    assert resp.status_code == 200 and resp.mimetype == "application/xml"
    assert resp.data.decode().startswith("<?xml") and "<Response" in resp.data.decode()
    assert _status(twilio_app, cid) == "unsubscribed"
    with twilio_app.app_context():
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.kind == "withdrawn"))
        assert (event.method, event.channel) == ("sms_keyword", "sms")
        assert db.session.scalar(sa.select(Action.kind).where(Action.kind == "unsubscribe")) == "unsubscribe"


def test_forged_signature_is_403_and_changes_nothing(twilio_app, client):
    cid = _subscriber(twilio_app)
    resp = _send(twilio_app, client, "STOP", sign=False)
    assert resp.status_code == 403
    no_header = client.post("/webhooks/twilio/inbound", data={"From": NUMBER, "Body": "STOP"})
    assert no_header.status_code == 403
    assert _status(twilio_app, cid) == "confirmed"
    with twilio_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)
                                 .where(ConsentEvent.kind == "withdrawn")) == 0


@pytest.mark.parametrize("word", ["START", "yes", " Unstop "])
def test_start_words_resubscribe(twilio_app, client, word):
    cid = _subscriber(twilio_app, status="unsubscribed")
    resp = _send(twilio_app, client, word)
    assert resp.status_code == 200 and "<Message>" in resp.data.decode()
    assert _status(twilio_app, cid) == "confirmed"
    with twilio_app.app_context():
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.kind == "granted",
                                                                ConsentEvent.method == "sms_keyword"))
        assert event is not None


@pytest.mark.parametrize("word", ["HELP", "info "])
def test_help_answers_twiml(twilio_app, client, word):
    cid = _subscriber(twilio_app)
    resp = _send(twilio_app, client, word)
    assert resp.status_code == 200 and resp.mimetype == "application/xml"
    assert "<Message>" in resp.data.decode() and "STOP" in resp.data.decode()
    assert _status(twilio_app, cid) == "confirmed"


def test_other_text_and_unknown_numbers_answer_empty_twiml(twilio_app, client):
    cid = _subscriber(twilio_app)
    resp = _send(twilio_app, client, "hello there")
    assert resp.status_code == 200 and "<Message>" not in resp.data.decode()
    assert _status(twilio_app, cid) == "confirmed"
    unknown = _send(twilio_app, client, "STOP", number="+33699999999")
    assert unknown.status_code == 200


def test_yes_confirms_a_pending_sms_signup(twilio_app, client, make_form, fake_twilio, worker):
    from tests.optin.conftest import drain, signup

    with configured(twilio_app, TWILIO_AUTH_TOKEN=TOKEN):
        form = make_form(slug="sms", fields=["phone", "first_name"], channels=["sms"])
        assert signup(client, twilio_app, form, {"phone": "06 11 22 33 44", "first_name": "Sam"}).status_code == 200
        drain(worker)
        assert len(fake_twilio.messages) == 1 and fake_twilio.messages[0]["To"] == NUMBER
        with twilio_app.app_context():
            contact = db.session.scalar(sa.select(Contact).where(Contact.phone == NUMBER))
            assert contact.sms_status == "pending" and contact.first_name is None
            cid = contact.id
        resp = _send(twilio_app, client, "Yes")
        assert resp.status_code == 200
    with twilio_app.app_context():
        contact = db.session.get(Contact, cid)
        assert contact.sms_status == "confirmed" and contact.first_name == "Sam"
        kinds = db.session.scalars(sa.select(Action.kind).where(Action.contact_id == cid)).all()
        assert sorted(kinds) == ["confirmation", "signup"]
