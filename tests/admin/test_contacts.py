"""Contacts in the admin: list and filters (keyset pages), contact page and timeline, edit, log a
call, export, erase, CSV import through the worker with its rejected rows."""
from __future__ import annotations

import io
import json
import re



def _contact(app, email, **fields):
    from contacts.services import upsert_contact

    with app.app_context():
        contact, _ = upsert_contact({"email": email, **fields}, method="api")
        return contact.id


def test_list_filters_and_keyset_pages(app, viewer):
    for i in range(55):
        _contact(app, f"p{i:02d}@example.org", city="Lyon" if i % 2 else "Paris", last_name=f"Name{i}")
    page = viewer.get("/admin/contacts").get_data(as_text=True)
    assert page.count('href="/admin/contacts/') >= 50
    assert "p00@example.org" in page and "p54@example.org" not in page
    cursor = re.search(r'cursor=([^&"]+)', page).group(1)
    page2 = viewer.get(f"/admin/contacts?cursor={cursor}").get_data(as_text=True)
    assert "p54@example.org" in page2 and "p00@example.org" not in page2
    lyon = viewer.get("/admin/contacts?city=lyon").get_data(as_text=True)
    assert "p01@example.org" in lyon and "p02@example.org" not in lyon
    search = viewer.get("/admin/contacts?q=p1").get_data(as_text=True)
    assert "p10@example.org" in search and "p20@example.org" not in search
    bad = viewer.get("/admin/contacts?cursor=%%%")
    assert bad.status_code == 422 and "cursor" in bad.get_data(as_text=True)


def test_filter_by_segment(app, marketer):
    _contact(app, "lyon@example.org", city="Lyon")
    _contact(app, "paris@example.org", city="Paris")
    resp = marketer.post("/admin/segments/new", {"name": "Lyonnais",
                                                  "rules": json.dumps({"field": "city", "op": "eq", "value": "Lyon"})})
    segment_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    page = marketer.get(f"/admin/contacts?segment={segment_id}").get_data(as_text=True)
    assert "lyon@example.org" in page and "paris@example.org" not in page
    assert marketer.get("/admin/contacts?segment=999").status_code == 422


def test_contact_page_edit_and_log_a_call_on_the_timeline(app, marketer):
    cid = _contact(app, "ada@example.org", first_name="Ada")
    page = marketer.get(f"/admin/contacts/{cid}").get_data(as_text=True)
    assert "ada@example.org" in page and "Ada" in page
    resp = marketer.post(f"/admin/contacts/{cid}", {"first_name": "Adèle", "city": "Lyon", "tags": "vip, b2b"})
    assert resp.status_code == 303
    resp = marketer.post(f"/admin/contacts/{cid}/actions", {"kind": "call", "subject": "Renewal",
                                                            "text": "Called about the renewal"})
    assert resp.status_code == 303
    page = marketer.get(f"/admin/contacts/{cid}").get_data(as_text=True)
    assert "Adèle" in page and "vip" in page
    timeline = page[page.index('id="timeline"'):]
    assert "call" in timeline and "Called about the renewal" in timeline
    from contacts.services import get_contact

    with app.app_context():
        c = get_contact(cid)
        assert (c.first_name, c.city, sorted(c.tags)) == ("Adèle", "Lyon", ["b2b", "vip"])


def test_bad_edit_names_the_field_and_changes_nothing(app, marketer):
    cid = _contact(app, "ada@example.org")
    _contact(app, "taken@example.org")
    resp = marketer.post(f"/admin/contacts/{cid}", {"email": "not an email"})
    assert resp.status_code == 422 and "email" in resp.get_data(as_text=True)
    resp = marketer.post(f"/admin/contacts/{cid}", {"email": "taken@example.org"})
    assert resp.status_code == 409 and "already used" in resp.get_data(as_text=True)
    resp = marketer.post(f"/admin/contacts/{cid}/actions", {"kind": "hack"})
    assert resp.status_code == 422
    assert marketer.get("/admin/contacts/999999").status_code == 404


def test_export_one_contact_and_the_filtered_list(app, marketer):
    cid = _contact(app, "ada@example.org", city="Lyon")
    _contact(app, "bob@example.org", city="Paris")
    resp = marketer.post(f"/admin/contacts/{cid}/export")
    assert resp.headers["Content-Disposition"].startswith("attachment")
    assert resp.get_json()["contact"]["email"] == "ada@example.org"
    csv_text = marketer.get("/admin/contacts/export.csv?city=Lyon").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("id,email") or "email" in csv_text.splitlines()[0]
    assert "ada@example.org" in csv_text and "bob@example.org" not in csv_text


def test_erase_needs_confirmation_then_anonymises(app, marketer):
    cid = _contact(app, "ada@example.org", first_name="Ada")
    marketer.post(f"/admin/contacts/{cid}/erase", {})
    from contacts.models import Contact
    from envoi.extensions import db

    with app.app_context():
        assert db.session.get(Contact, cid).email == "ada@example.org"
    resp = marketer.post(f"/admin/contacts/{cid}/erase", {"confirm": "yes"})
    assert resp.status_code == 303
    with app.app_context():
        contact = db.session.get(Contact, cid)
        assert contact.email is None and contact.erased_at is not None
    assert "ada@example.org" not in marketer.get("/admin/contacts").get_data(as_text=True)


def test_csv_import_runs_in_the_worker_with_progress_and_rejected_rows(app, marketer, worker):
    from workers.actors import run_import

    csv_text = "email,first_name,city\nada@example.org,Ada,Lyon\nnot-an-email,Bob,Paris\ncy@example.org,Cy,Nice\n"
    resp = marketer.post("/admin/contacts/import", {"file": (io.BytesIO(csv_text.encode()), "people.csv")},
                         content_type="multipart/form-data")
    assert resp.status_code == 303
    job_url = resp.headers["Location"]
    worker.join(run_import.queue_name)
    worker.join_all()
    page = marketer.get(job_url).get_data(as_text=True)
    assert 'data-status="done"' in page
    assert re.search(r'id="created">2<', page) and re.search(r'id="rejected">1<', page)
    assert "not-an-email" in page  # the rejected row is shown, with its reason
    rejects = marketer.get(job_url + "/rejects.csv")
    assert rejects.status_code == 200 and "not-an-email" in rejects.get_data(as_text=True)
    listing = marketer.get("/admin/contacts").get_data(as_text=True)
    assert "ada@example.org" in listing and "cy@example.org" in listing


def test_import_refuses_a_missing_or_bad_file(marketer, viewer):
    resp = marketer.post("/admin/contacts/import", {}, content_type="multipart/form-data")
    assert resp.status_code == 422 and "file" in resp.get_data(as_text=True)
    resp = marketer.post("/admin/contacts/import", {"file": (io.BytesIO(b"\xff\xfe\x00garbage"), "x.csv")},
                         content_type="multipart/form-data")
    assert resp.status_code == 422
    resp = viewer.post("/admin/contacts/import", {"file": (io.BytesIO(b"email\na@b.org\n"), "x.csv")},
                       content_type="multipart/form-data")
    assert resp.status_code == 403


def test_search_matches_the_start_of_email_last_name_or_phone(app, viewer):
    from contacts.query import phone_prefix

    _contact(app, "anne.martin@example.org", last_name="Dupont", phone="06 12 34 56 78")
    _contact(app, "bob@example.org", last_name="Martin", phone="+44 7911 123456")
    _contact(app, "carl@example.org", last_name="Dupond")
    _contact(app, "d_x@example.org", last_name="Perez")

    def found(q):
        from urllib.parse import quote

        page = viewer.get(f"/admin/contacts?q={quote(q)}").get_data(as_text=True)
        return {e for e in ("anne.martin@", "bob@", "carl@", "d_x@") if e in page}

    assert found("anne") == {"anne.martin@"}  # email
    assert found("MARTIN") == {"bob@"}  # last name, any case; not the middle of an email
    assert found("dupon") == {"anne.martin@", "carl@"}
    assert found("06 12 34") == {"anne.martin@"}  # the national number
    assert found("+33 6 12") == {"anne.martin@"}
    assert found("0044 7911") == {"bob@"}
    assert found("d_") == {"d_x@"} and found("b_") == set() and found("%") == set()  # no wildcards
    assert found("12 34") == set()  # the start only
    assert "start of the email address" in viewer.get("/admin/contacts").get_data(as_text=True)
    assert phone_prefix("06 12", "FR") == "+33612" and phone_prefix("anne", "FR") is None
