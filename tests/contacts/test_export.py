"""CSV export: the import's columns, filters, and a round trip through an empty database."""
import csv
import io

import sqlalchemy as sa

from contacts import services
from contacts.exporter import export_csv
from contacts.importer import import_csv
from contacts.models import ConsentEvent, Contact, ContactTopic, Topic
from envoi.extensions import db

PEOPLE = [
    {"email": "anne@example.fr", "phone": "06 12 34 56 78", "first_name": "Anne", "last_name": "Martin",
     "city": "Lyon", "birth_date": "1980-02-03", "gender": "f", "tags": ["vip", "b2b"], "lifecycle": "customer",
     "attributes": {"score": 12.5, "vip": True}, "topics": ["news"], "email_status": "confirmed",
     "consent": {"source": "salon", "at": "2024-01-02T03:04:05+00:00", "text": "Oui, écrivez-moi"}},
    {"email": "bob@example.fr", "city": "Paris", "company_name": 'Durand "et fils", SARL', "headcount": 12,
     "email_status": "unsubscribed", "address": "1 rue de la Paix\nBâtiment B"},
    {"phone": "+44 7911 123456", "first_name": "Carl", "sms_status": "confirmed",
     "consent": {"source": "shop", "at": "2024-05-06T07:08:09+00:00"}},
]


def snapshot():
    out = []
    for contact in db.session.scalars(sa.select(Contact).where(Contact.erased_at.is_(None))
                                      .order_by(Contact.email, Contact.phone)):
        data = services.contact_to_dict(contact)
        for key in ("id", "created_at", "updated_at"):
            data.pop(key)
        out.append(data)
    consents = sorted((e.channel, e.kind, e.source, e.text, e.consented_at.isoformat())
                      for e in db.session.scalars(sa.select(ConsentEvent).where(ConsentEvent.topic_id.is_(None),
                                                                                ConsentEvent.kind == "granted")))
    return out, consents


def setup_people():
    services.create_topic("news", "News")
    services.define_attribute("score", "number")
    services.define_attribute("vip", "boolean")
    for person in PEOPLE:
        services.upsert_contact(person)
    gone, _ = services.upsert_contact({"email": "gone@example.fr"})
    services.erase_contact(gone.id)


def test_export_then_import_into_an_empty_database_recreates_the_contacts(app, ctx, tmp_path):
    setup_people()
    before = snapshot()
    path = tmp_path / "export.csv"
    res = app.test_cli_runner().invoke(args=["contacts", "export", str(path)])
    assert res.exit_code == 0 and "exported 3 contact(s)" in res.output, res.output
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["email"] for r in rows] == ["anne@example.fr", "bob@example.fr", ""]
    assert rows[0]["tags"] == "b2b|vip" and rows[0]["attributes.vip"] == "true" and rows[0]["consent_source"] == "salon"

    # Empty the customer file, keep the reference data (topics, attributes).
    db.session.execute(sa.delete(ContactTopic))
    db.session.execute(sa.delete(ConsentEvent))
    db.session.execute(sa.delete(Contact))
    db.session.commit()
    result = import_csv(str(path))
    assert (result.created, result.rejected) == (3, 0)
    after = snapshot()
    assert after == before
    assert import_csv(str(path)).unchanged == 3


def test_export_filters_and_stdout(app, ctx):
    setup_people()
    out = io.StringIO()
    assert export_csv(out, {"city": "lyon"}) == 1
    assert "anne@example.fr" in out.getvalue()
    out = io.StringIO()
    assert export_csv(out, {"topic": "news"}) == 1
    out = io.StringIO()
    assert export_csv(out, {"email_status": "unsubscribed"}) == 1 and "bob@example.fr" in out.getvalue()
    res = app.test_cli_runner().invoke(args=["contacts", "export", "-", "--tag", "vip"])
    assert res.exit_code == 0 and "anne@example.fr" in res.output and "bob@" not in res.output
    res = app.test_cli_runner().invoke(args=["contacts", "export", "-", "--topic", "nope"])
    assert res.exit_code == 1 and "topic" in res.output


def test_export_pages_cover_every_contact(app, ctx):
    services.create_topic("news", "News")
    for i in range(25):
        services.upsert_contact({"email": f"p{i}@example.fr", "topics": ["news"]})
    out = io.StringIO()
    assert export_csv(out, page=7) == 25
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len({r["email"] for r in rows}) == 25 and all(r["topics"] == "news" for r in rows)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Topic)) == 1
