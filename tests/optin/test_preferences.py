"""The preference centre: channels, topics, JSON download, erase my data."""
from __future__ import annotations

import json
import re

import sqlalchemy as sa

from contacts import services as contacts
from contacts.models import Action, ConsentEvent, Contact, ContactTopic, Suppression
from envoi.extensions import db
from optin import tokens


def _setup(app):
    with app.app_context():
        contacts.create_topic("weekly", "Weekly")
        contacts.create_topic("offers", "Offers")
        contact, _ = contacts.upsert_contact({
            "email": "pref@example.org", "first_name": "Pia", "email_status": "confirmed", "topics": ["weekly"],
            "consent": {"source": "test", "at": "2024-01-01T00:00:00Z"}})
        cid = contact.id
    with app.test_request_context():
        return cid, f"/preferences/{tokens.preferences_token(cid)}"


def _csrf(client, path):
    page = client.get(path)
    assert page.status_code == 200
    return page, re.search(r'name="_csrf" value="([^"]+)"', page.data.decode()).group(1)


def test_page_shows_channels_and_topics(app, client):
    _, path = _setup(app)
    page, _ = _csrf(client, path)
    html = page.data.decode()
    assert 'name="email" checked' in html and 'value="weekly" checked' in html
    assert 'value="offers">' in html


def test_change_channels_and_topics(app, client):
    cid, path = _setup(app)
    _, csrf = _csrf(client, path)
    resp = client.post(path, data={"_csrf": csrf, "action": "save", "topics": ["offers"]})
    assert resp.status_code == 200
    with app.app_context():
        contact = db.session.get(Contact, cid)
        assert contact.email_status == "unsubscribed"
        subs = dict(db.session.execute(sa.select(ContactTopic.topic_id, ContactTopic.subscribed)
                                       .where(ContactTopic.contact_id == cid)).all())
        assert sorted(subs.values()) == [False, True]
        events = db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.method == "link")).all()
        assert sorted((e.kind, e.topic_id is None) for e in events) == [
            ("granted", False), ("withdrawn", False), ("withdrawn", True)]
        assert db.session.scalar(sa.select(Action.data).where(Action.kind == "preferences"))["changes"]


def test_post_needs_the_csrf_token(app, client):
    cid, path = _setup(app)
    client.get(path)
    resp = client.post(path, data={"action": "save"})
    assert resp.status_code == 400
    with app.app_context():
        assert db.session.get(Contact, cid).email_status == "confirmed"


def test_download_my_data(app, client):
    cid, path = _setup(app)
    _, csrf = _csrf(client, path)
    resp = client.post(path, data={"_csrf": csrf, "action": "export"})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert "attachment" in resp.headers["Content-Disposition"]
    data = json.loads(resp.data)
    assert data["contact"]["email"] == "pref@example.org" and data["consents"]


def test_erase_my_data(app, client):
    cid, path = _setup(app)
    _, csrf = _csrf(client, path)
    assert client.post(path, data={"_csrf": csrf, "action": "erase"}).status_code == 422  # not confirmed
    resp = client.post(path, data={"_csrf": csrf, "action": "erase", "confirm": "yes"})
    assert resp.status_code == 200
    with app.app_context():
        contact = db.session.get(Contact, cid)
        assert contact.erased_at is not None and contact.email is None and contact.first_name is None
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 1
        with_reimport = None
        try:
            contacts.upsert_contact({"email": "pref@example.org"})
        except Exception as err:  # noqa: BLE001 - the suppression blocks re-import
            with_reimport = type(err).__name__
        assert with_reimport == "Suppressed"
    assert client.get(path).status_code == 200  # the page now says the data is gone


def test_bad_token(app, client):
    assert client.get("/preferences/garbage").status_code == 400
