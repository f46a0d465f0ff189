"""Right of access (export) and right to erasure (anonymise, keep counts, block re-import)."""
from contacts.models import Action, ConsentEvent, Contact, Purchase
from envoi.extensions import db

CONSENT = {"source": "salon", "at": "2024-03-01T09:00:00Z", "text": "Oui à la newsletter"}


def _person(api):
    cid = api.post("/api/v1/contacts", json={
        "email": "marie@example.org", "phone": "0612345678", "first_name": "Marie", "last_name": "Curie",
        "city": "Paris", "birth_date": "1980-11-07", "tags": ["vip"], "email_status": "confirmed",
        "consent": CONSENT}, headers={"User-Agent": "pytest-agent"}).get_json()["id"]
    api.post(f"/api/v1/contacts/{cid}/actions", json={"kind": "call", "data": {"notes": "a rappelé"}})
    api.post("/api/v1/purchases", json={"contact": {"id": cid}, "sku": "X", "amount": "12", "currency": "EUR"})
    return cid


def test_export_holds_everything_stored(api):
    cid = _person(api)
    resp = api.get(f"/api/v1/contacts/{cid}/export")
    assert resp.status_code == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    data = resp.get_json()
    assert data["contact"]["email"] == "marie@example.org" and data["contact"]["birth_date"] == "1980-11-07"
    assert data["consents"][0]["text"] == CONSENT["text"] and data["consents"][0]["user_agent"] == "pytest-agent"
    assert data["actions"][0]["data"] == {"notes": "a rappelé"}
    assert data["purchases"][0]["amount"] == "12.00"


def test_erase_anonymises_keeps_counts_and_blocks_reimport(api, app):
    cid = _person(api)
    assert api.delete(f"/api/v1/contacts/{cid}").status_code == 204
    assert api.get(f"/api/v1/contacts/{cid}").status_code == 404
    assert api.get(f"/api/v1/contacts/{cid}/export").status_code == 404
    assert api.get("/api/v1/contacts").get_json()["items"] == []
    with app.app_context():
        row = db.session.get(Contact, cid)
        assert (row.email, row.phone, row.first_name, row.city, row.birth_date, row.tags) == (None, None, None, None, None, [])
        assert row.erased_at is not None and row.purchase_count == 1
        assert db.session.query(Purchase).filter_by(contact_id=cid).count() == 1
        actions = db.session.query(Action).filter_by(contact_id=cid).all()
        assert sorted(a.kind for a in actions) == ["call", "erase"]
        assert all("notes" not in a.data for a in actions)
        consent = db.session.query(ConsentEvent).filter_by(contact_id=cid).one()
        assert consent.kind == "granted" and consent.user_agent is None and consent.ip is None
    resp = api.post("/api/v1/contacts", json={"email": "MARIE@example.org"})
    assert resp.status_code == 409 and "email" in resp.get_json()["fields"]
    resp = api.post("/api/v1/contacts", json={"phone": "+33 6 12 34 56 78"})
    assert resp.status_code == 409 and "phone" in resp.get_json()["fields"]
    resp = api.post("/api/v1/purchases", json={"email": "marie@example.org", "sku": "Y", "amount": "1", "currency": "EUR"})
    assert resp.status_code == 409
    # Other people are unaffected.
    assert api.post("/api/v1/contacts", json={"email": "pierre@example.org"}).status_code == 201


def test_consent_events_are_append_only(ctx):
    import pytest

    from contacts.services import upsert_contact

    contact, _ = upsert_contact({"email": "a@example.org", "email_status": "confirmed", "consent": CONSENT})
    event = db.session.query(ConsentEvent).filter_by(contact_id=contact.id).one()
    event.text = "something else"
    with pytest.raises(RuntimeError, match="append-only"):
        db.session.commit()
    db.session.rollback()
    assert db.session.query(ConsentEvent).one().text == CONSENT["text"]
