"""Unsubscribe: the RFC 8058 one-click POST exactly as a mailbox provider sends it, the page."""
from __future__ import annotations

import sqlalchemy as sa

from contacts import services as contacts
from contacts.models import Action, ConsentEvent, Contact
from envoi.extensions import db
from optin import tokens
from segments.models import MessageEvent


def _subscriber(app, email="sub@example.org", phone=None):
    with app.app_context():
        raw = {"email": email, "email_status": "confirmed",
               "consent": {"source": "test", "at": "2024-01-01T00:00:00Z", "text": "yes"}}
        if phone:
            raw.update(phone=phone, sms_status="confirmed")
        contact, _ = contacts.upsert_contact(raw)
        return contact.id


def _token(app, cid, channel="email"):
    with app.test_request_context():
        return tokens.unsubscribe_token(cid, channel)


def _state(app, cid):
    with app.app_context():
        contact = db.session.get(Contact, cid)
        withdrawn = db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.contact_id == cid,
                                                                     ConsentEvent.kind == "withdrawn")).all()
        actions = db.session.scalars(sa.select(Action.kind).where(Action.contact_id == cid,
                                                                  Action.kind == "unsubscribe")).all()
        return contact.email_status, contact.sms_status, withdrawn, actions


def test_one_click_form_encoded_as_a_mailbox_provider_sends_it(app, make_form):
    cid = _subscriber(app)
    token = _token(app, cid)
    provider = app.test_client(use_cookies=False)
    resp = provider.post(f"/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200
    assert "Set-Cookie" not in resp.headers
    status, _, withdrawn, actions = _state(app, cid)
    assert status == "unsubscribed"
    assert [(e.method, e.channel) for e in withdrawn] == [("link", "email")]
    assert actions == ["unsubscribe"]
    again = provider.post(f"/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert again.status_code == 200
    assert len(_state(app, cid)[2]) == 1  # idempotent: one event


def test_one_click_multipart(app):
    cid = _subscriber(app, phone="0611223344")
    token = _token(app, cid, "sms")
    boundary = "----provider1234"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n"
            f"--{boundary}--\r\n").encode()
    resp = app.test_client(use_cookies=False).post(
        f"/unsubscribe/{token}", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 200
    email_status, sms_status, withdrawn, _ = _state(app, cid)
    assert (email_status, sms_status) == ("confirmed", "unsubscribed")
    assert withdrawn[0].channel == "sms"


def test_campaign_attribution(app):
    from campaigns.models import Campaign

    cid = _subscriber(app)
    with app.app_context():
        campaign = Campaign(name="Soldes", channel="email", subject="s", text="t", exclude_segment_ids=[])
        db.session.add(campaign)
        db.session.commit()
        campaign_id = campaign.id
    token = _token(app, cid)
    client = app.test_client(use_cookies=False)
    assert client.post(f"/unsubscribe/{token}?c=999999", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(MessageEvent)) == 0  # no such campaign
        db.session.get(Contact, cid).email_status = "confirmed"
        db.session.commit()
    assert client.post(f"/unsubscribe/{token}?c={campaign_id}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with app.app_context():
        event = db.session.scalar(sa.select(MessageEvent))
        assert (event.kind, event.campaign_id, event.channel, event.contact_id) == ("unsubscribed", campaign_id,
                                                                                    "email", cid)


def test_get_shows_a_button_and_the_preference_centre(app, client):
    cid = _subscriber(app)
    token = _token(app, cid)
    page = client.get(f"/unsubscribe/{token}?c=7", headers={"Accept-Language": "fr"})
    assert page.status_code == 200
    html = page.data.decode()
    assert 'method="post"' in html and f'action="/unsubscribe/{token}?c=7"' in html
    assert "/preferences/" in html and "Me désabonner" in html
    assert _state(app, cid)[0] == "confirmed"  # a GET changes nothing


def test_bad_tokens(app, client):
    cid = _subscriber(app)
    token = _token(app, cid)
    with app.test_request_context():
        confirm = tokens.confirm_token(cid, "email", [], None)
    for bad in (token[:-2] + "zz", confirm, "nope"):
        assert client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 400
        assert client.get(f"/unsubscribe/{bad}").status_code == 400
    assert _state(app, cid)[0] == "confirmed"
