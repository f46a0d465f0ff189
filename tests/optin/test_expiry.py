"""Unconfirmed signups expire: personal data goes, the requested consents stay as evidence."""
from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from contacts import services as contacts
from contacts.models import ConsentEvent, Contact
from envoi.extensions import db
from envoi.types import utcnow
from optin import services
from tests.optin.conftest import signup


def test_unconfirmed_signups_expire(app, client, make_form):
    form = make_form(fields=["email", "first_name", "phone"])
    assert signup(client, app, form, {"email": "gone@example.org", "first_name": "Gus",
                                      "phone": "0611223344"}).status_code == 200
    with app.app_context():
        contacts.upsert_contact({"email": "customer@example.org", "last_name": "Kept"})
    assert signup(client, app, form, {"email": "customer@example.org", "first_name": "X"}).status_code == 200
    assert signup(client, app, form, {"email": "recent@example.org"}).status_code == 200
    with app.app_context():
        later = utcnow() + timedelta(days=app.config["OPTIN_PENDING_DAYS"], hours=1)
        # the recent one signed up just now, the others 31 days ago
        recent = db.session.scalar(sa.select(Contact).where(Contact.email == "recent@example.org"))
        recent.email_status_at = later - timedelta(days=1)
        db.session.commit()
        result = services.expire_pending_signups(now=later)
        assert result == {"expired": 2, "anonymised": 1}
        gone = db.session.scalar(sa.select(Contact).where(Contact.erased_at.isnot(None)))
        assert gone.email is None and gone.phone is None and gone.email_status == "none"
        evidence = db.session.scalar(sa.select(ConsentEvent).where(ConsentEvent.contact_id == gone.id))
        assert evidence.kind == "requested" and evidence.text == "I agree to receive the newsletter."
        assert evidence.data == {"expired": True}  # the submitted values are gone, the proof stays
        kept = db.session.scalar(sa.select(Contact).where(Contact.email == "customer@example.org"))
        assert kept.last_name == "Kept" and kept.email_status == "none" and kept.erased_at is None
        assert db.session.scalar(sa.select(Contact.email_status).where(Contact.email == "recent@example.org")) \
            == "pending"
        assert services.expire_pending_signups(now=later) == {"expired": 0, "anonymised": 0}


def test_expired_address_may_sign_up_again(app, client, make_form):
    form = make_form()
    signup(client, app, form, {"email": "again@example.org"})
    with app.app_context():
        services.expire_pending_signups(now=utcnow() + timedelta(days=400))
    from envoi.extensions import limiter

    with app.app_context():
        limiter.reset()
    assert signup(client, app, form, {"email": "again@example.org"}).status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(Contact.email_status).where(Contact.email == "again@example.org")) \
            == "pending"


def test_periodic_actor_runs_the_service(app, worker):
    from tests.optin.conftest import drain
    from workers.optin import expire_pending_signups

    expire_pending_signups.send()
    drain(worker)


def test_an_opted_out_address_stays_opted_out_after_expiry(app, client, make_form):
    form = make_form()
    with app.app_context():
        contact, _ = contacts.upsert_contact({"email": "out@example.org", "email_status": "unsubscribed"})
        cid = contact.id
    assert signup(client, app, form, {"email": "out@example.org"}).status_code == 200
    with app.app_context():
        assert db.session.get(Contact, cid).email_status == "pending"
        services.expire_pending_signups(now=utcnow() + timedelta(days=400))
        contact = db.session.get(Contact, cid)
        assert contact.email_status == "unsubscribed" and contact.email == "out@example.org"
