"""A saved segment filters the contact list, the CLI export, and erasure scrubs message events."""
import csv
import io

from contacts.models import Contact
from envoi.extensions import db
from envoi.types import utcnow

LYON = {"field": "city", "op": "eq", "value": "Lyon"}


def _people(api):
    ids = [api.post("/api/v1/contacts", json={"email": f"p{i}@example.org", "city": "Lyon" if i % 2 else "Paris"})
           .get_json()["id"] for i in range(6)]
    seg = api.post("/api/v1/segments", json={"name": "Lyonnais", "rules": LYON}).get_json()
    return ids, seg


def test_contact_list_takes_a_segment_with_cursor_pages(api):
    ids, seg = _people(api)
    page = api.get(f"/api/v1/contacts?segment={seg['id']}&limit=2").get_json()
    assert [c["id"] for c in page["items"]] == [ids[1], ids[3]]
    rest = api.get(f"/api/v1/contacts?segment={seg['id']}&limit=2&cursor={page['next']}").get_json()
    assert [c["id"] for c in rest["items"]] == [ids[5]]
    # Live: a new member shows up without any rebuild.
    new = api.post("/api/v1/contacts", json={"email": "late@example.org", "city": "Lyon"}).get_json()["id"]
    assert new in [c["id"] for c in api.get(f"/api/v1/contacts?segment={seg['id']}").get_json()["items"]]
    resp = api.get("/api/v1/contacts?segment=424242")
    assert resp.status_code == 422 and resp.get_json()["fields"] == {"segment": "no segment 424242"}


def test_cli_export_of_a_segment_and_a_bad_segment_keeps_the_file(api, app, tmp_path):
    ids, seg = _people(api)
    out = tmp_path / "lyon.csv"
    result = app.test_cli_runner().invoke(args=["contacts", "export", str(out), "--segment", str(seg["id"])])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(r["email"] for r in rows) == ["p1@example.org", "p3@example.org", "p5@example.org"]
    result = app.test_cli_runner().invoke(args=["contacts", "export", str(out), "--segment", "999"])
    assert result.exit_code != 0 and "segment" in result.output
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 3  # not truncated


def test_erase_scrubs_message_event_data(api, app):
    from segments.models import MessageEvent

    cid = api.post("/api/v1/contacts", json={"email": "gone@example.org"}).get_json()["id"]
    with app.app_context():
        db.session.add(MessageEvent(contact_id=cid, channel="email", kind="clicked", occurred_at=utcnow(),
                                    is_bot=False, data={"url": "https://shop.example/?email=gone@example.org"}))
        db.session.commit()
    assert api.delete(f"/api/v1/contacts/{cid}").status_code == 204
    with app.app_context():
        event = db.session.query(MessageEvent).filter_by(contact_id=cid).one()
        assert event.kind == "clicked" and event.data == {}
        assert db.session.get(Contact, cid).email is None
