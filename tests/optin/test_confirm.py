"""Double opt-in: the confirmation email actually received, the confirm page and POST, tokens."""
from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa
from itsdangerous import URLSafeTimedSerializer

from contacts import services as contacts
from contacts.models import Action, ConsentEvent, Contact, ContactTopic
from envoi.extensions import db
from optin import tokens
from tests.conftest import configured
from tests.optin.conftest import drain, link_in, signup


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _contact(email):
    return db.session.scalar(sa.select(Contact).where(Contact.email == email))


def test_confirm_through_the_email_actually_received(app, client, make_form, smtp_server, worker):
    with app.app_context():
        contacts.create_topic("weekly", "Weekly")
    form = make_form(topics=["weekly"], confirm_redirect_url="https://shop.example.org/merci")
    resp = signup(client, app, form, {"email": "Ana@Example.org", "first_name": "Ana"},
                  headers={"User-Agent": "Browser/1.0", "Referer": "https://shop.example.org/page"})
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "ok"
    with app.app_context():
        contact = _contact("ana@example.org")
        assert contact.email_status == "pending" and contact.first_name is None  # unconfirmed input not applied
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.kind == "requested"))
        assert (event.method, event.channel, event.text) == ("form", "email", "I agree to receive the newsletter.")
        assert event.user_agent == "Browser/1.0" and event.page_url == "https://shop.example.org/page"
        assert event.data["consent_version"] == "v1" and event.data["values"]["first_name"] == "Ana"
        assert db.session.scalar(sa.select(Action.kind).where(Action.contact_id == contact.id)) == "signup"
    drain(worker)
    messages = smtp_server.wait_for(1)
    assert len(messages) == 1 and messages[0]["to"] == ["ana@example.org"]
    msg = messages[0]["message"]
    assert "Confirm" in msg["Subject"]
    assert msg.get_body(("html",)) is not None
    url = link_in(msg, "/confirm/")
    page = client.get(_path(url))
    assert page.status_code == 200
    assert b'method="post"' in page.data and b"<button" in page.data and b".submit()" in page.data
    with app.app_context():
        assert _contact("ana@example.org").email_status == "pending"  # a GET (link scanner) confirms nothing
    resp = client.post(_path(url), headers={"User-Agent": "Clicker/2.0"})
    assert resp.status_code == 303 and resp.headers["Location"] == "https://shop.example.org/merci"
    again = client.post(_path(url))
    assert again.status_code == 303  # twice is a success
    with app.app_context():
        contact = _contact("ana@example.org")
        assert contact.email_status == "confirmed" and contact.email_status_at is not None
        assert contact.first_name == "Ana"
        assert db.session.scalar(sa.select(ContactTopic.subscribed).where(ContactTopic.contact_id == contact.id))
        granted = db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.kind == "granted")).all()
        assert len(granted) == 2  # the channel and the topic, once
        assert {e.user_agent for e in granted} == {"Clicker/2.0"}
        kinds = db.session.scalars(sa.select(Action.kind).where(Action.contact_id == contact.id)).all()
        assert sorted(kinds) == ["confirmation", "signup"]


def test_french_confirmation_email(app, client, make_form, smtp_server, worker):
    form = make_form()
    signup(client, app, form, {"email": "fr@example.org"}, headers={"Accept-Language": "fr-FR,fr;q=0.9"})
    drain(worker)
    msg = smtp_server.wait_for(1)[0]["message"]
    assert "Confirmez" in msg["Subject"]
    assert "Pour confirmer" in msg.get_body(("plain",)).get_content()


def test_existing_contact_is_not_overwritten_until_confirmed(app, client, make_form):
    form = make_form()
    with app.app_context():
        contacts.upsert_contact({"email": "known@example.org", "first_name": "Real"})
    assert signup(client, app, form, {"email": "known@example.org", "first_name": "Fake"}).status_code == 200
    with app.app_context():
        assert _contact("known@example.org").first_name == "Real"


def _token(app, contact_id, channel="email", form_id=None):
    with app.test_request_context():
        return tokens.confirm_token(contact_id, channel, [], form_id)


def _pending_contact(app, email="p@example.org"):
    with app.app_context():
        contact, _ = contacts.upsert_contact({"email": email})
        contact.email_status = "pending"
        db.session.commit()
        return contact.id


def test_tampered_token_is_a_clean_400(app, client):
    cid = _pending_contact(app)
    token = _token(app, cid)
    bad = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    for method in (client.get, client.post):
        resp = method(f"/confirm/{bad}")
        assert resp.status_code == 400
        assert b"<html" in resp.data and b"Traceback" not in resp.data
    assert client.post("/confirm/garbage").status_code == 400


def test_wrong_purpose_token_is_refused(app, client):
    cid = _pending_contact(app)
    with app.test_request_context():
        unsub = tokens.unsubscribe_token(cid, "email")
        prefs = tokens.preferences_token(cid)
    assert client.post(f"/confirm/{unsub}").status_code == 400
    assert client.post(f"/confirm/{prefs}").status_code == 400
    with app.app_context():
        assert db.session.get(Contact, cid).email_status == "pending"


def test_expired_token_offers_a_new_link(app, client, make_form, smtp_server, worker):
    form = make_form()
    signup(client, app, form, {"email": "late@example.org"})
    drain(worker)
    url = link_in(smtp_server.wait_for(1)[0]["message"], "/confirm/")
    token = urlsplit(url).path.rsplit("/", 1)[1]
    smtp_server.clear()
    with configured(app, OPTIN_TOKEN_MAX_AGE=60):
        import time as _time

        real = _time.time
        # Read the token as if 2 minutes had passed: itsdangerous takes the time from time.time().
        _time.time = lambda: real() + 120
        try:
            page = client.get(f"/confirm/{token}")
            post = client.post(f"/confirm/{token}")
        finally:
            _time.time = real
    assert page.status_code == 410 and b"/resend" in page.data
    assert post.status_code == 410
    with app.app_context():
        assert _contact("late@example.org").email_status == "pending"
        limiter_reset(app)
    resp = client.post(f"/confirm/{token}/resend")
    assert resp.status_code == 200
    drain(worker)
    assert len(smtp_server.wait_for(1)) == 1
    resp = client.post(f"/confirm/{token}/resend")  # rate limited per address: same answer, no mail
    assert resp.status_code == 200
    drain(worker)
    assert len(smtp_server.messages) == 1


def limiter_reset(app):
    from envoi.extensions import limiter

    limiter.reset()


def test_expired_token_still_carries_its_payload(app):
    with app.test_request_context():
        serializer = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt=tokens.SALTS["confirm"])
        token = serializer.dumps([5, "email", [], None])
        try:
            tokens.read_confirm_token(token, max_age=-1)
        except tokens.TokenExpired as err:
            assert err.payload["contact_id"] == 5
        else:
            raise AssertionError("not expired")


def test_double_opt_in_off_grants_at_once(app, client, make_form, smtp_server, worker):
    form = make_form(double_opt_in=False)
    resp = signup(client, app, form, {"email": "now@example.org", "first_name": "Now"})
    assert resp.status_code == 200
    drain(worker)
    assert smtp_server.messages == []
    with app.app_context():
        contact = _contact("now@example.org")
        assert contact.email_status == "confirmed" and contact.first_name == "Now"
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)
                                 .where(ConsentEvent.kind == "granted")) == 1


def test_sms_signup_confirms_through_the_link_in_the_sms(app, client, make_form, fake_twilio, worker):
    form = make_form(slug="sms", fields=["phone"], channels=["sms"])
    resp = signup(client, app, form, {"phone": "06 12 34 56 78"})
    assert resp.status_code == 200, resp.get_json()
    drain(worker)
    assert len(fake_twilio.messages) == 1
    sent = fake_twilio.messages[0]
    assert sent["To"] == "+33612345678"
    url = next(word for word in sent["Body"].split() if "/confirm/" in word)
    with app.app_context():
        contact = db.session.scalar(sa.select(Contact).where(Contact.phone == "+33612345678"))
        assert contact.sms_status == "pending"
        assert not db.session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)
                                     .where(ConsentEvent.kind == "granted"))
    assert client.post(_path(url)).status_code == 200
    with app.app_context():
        contact = db.session.scalar(sa.select(Contact).where(Contact.phone == "+33612345678"))
        assert contact.sms_status == "confirmed"
        event = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.kind == "granted"))
        assert event.channel == "sms"


def test_confirmation_skipped_once_confirmed(app, client, make_form, smtp_server, worker):
    from optin.services import send_confirmation

    form = make_form()
    with app.app_context():
        contacts.upsert_contact({"email": "done@example.org"})
        contact = _contact("done@example.org")
        contact.email_status = "confirmed"
        db.session.commit()
        assert send_confirmation(contact.id, "email", form["id"], "en") == "already confirmed"
